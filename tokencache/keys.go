package tokencache

import (
	"hash/crc32"
	"strconv"
)

// Key layout. Every key of one customer carries the hash tag {b<N>} of the
// customer's bucket, so that in Redis Cluster the record, its tombstone, the
// bucket's schedule and whatever other packages keep per customer (leases,
// journal entries) live in one slot and one Lua script can touch them all:
//
//	<prefix>{b<N>}:rec:<customerID>  the customer's Entry (a hash: record, lease,
//	                                 intent, journal; after Delete the tombstone)
//	<prefix>{b<N>}:due               the bucket's schedule (a sorted set: customer id
//	                                 scored by NextRefresh in Unix milliseconds)
//	<prefix>{b<N>}:idx:active        the bucket's active customers (sorted set, score 0)
//	<prefix>{b<N>}:idx:reauth        its reauthorization_required customers (idem)
//	<prefix>{b<N>}:ev:out            the bucket's event outbox (a list, oldest first)
//	<prefix>{b<N>}:ev:rtx            its refresh token expiry schedule (a sorted set:
//	                                 customer id scored by the expiry in Unix ms)
//	<prefix>{b<N>}:ev:lease          the delivery lease of its outbox (a string: the fence)
//
// and, outside the bucket slots, keys written after a record's write from
// Go (best effort: see redis_hint.go and events.go):
//
//	<prefix>sched                the schedule hint (a sorted set: bucket number scored
//	                             by the earliest NextRefresh it may hold, in Unix ms)
//	<prefix>ev:hint              the events hint (a sorted set: bucket numbers scored by
//	                             when a deliverer should look, Unix ms)
//	<prefix>{census}:at          active customers scored by access token expiry (ms)
//	<prefix>{census}:ra          reauthorization_required customers (score 0)
//	<prefix>{census}:lease       customers with a lease, scored by its end (ms)
//	<prefix>{census}:gone        customers scored by when their record is forgotten (ms)
//
// (the census sets share one slot, so that one script counts them), and one
// key-less name, the pub/sub channel <prefix>done.

// DefaultKeyPrefix is the key prefix when RedisConfig.Prefix is empty.
const DefaultKeyPrefix = "tokenproxy:"

// DefaultBuckets is the bucket count when RedisConfig.Buckets is zero.
const DefaultBuckets = 1024

// Bucket returns the schedule bucket of a customer: the CRC-32 (IEEE) of its
// id modulo buckets. It is stable across processes and versions; changing
// the bucket count moves customers to other keys, so every replica sharing a
// store must use the same count.
func Bucket(customerID string, buckets int) int {
	return int(crc32.ChecksumIEEE([]byte(customerID)) % uint32(buckets))
}

// Prefix is the key prefix of every key this store uses.
func (s *Redis) Prefix() string { return s.prefix }

// Buckets is the number of schedule buckets.
func (s *Redis) Buckets() int { return s.buckets }

// BucketOf is Bucket(customerID, s.Buckets()).
func (s *Redis) BucketOf(customerID string) int { return Bucket(customerID, s.buckets) }

// BucketKeyPrefix returns "<prefix>{b<N>}:", the start of every key in
// bucket N; keys that begin with it share one Cluster slot.
func (s *Redis) BucketKeyPrefix(bucket int) string {
	return s.prefix + "{b" + strconv.Itoa(bucket) + "}:"
}

// CustomerKey returns "<prefix>{b<N>}:<kind>:<customerID>", the key of one
// kind of per-customer data, in the customer's bucket. Other packages use it
// for their own per-customer keys (for example kind "lease") so that those
// share a slot with the record.
func (s *Redis) CustomerKey(customerID, kind string) string {
	return s.BucketKeyPrefix(s.BucketOf(customerID)) + kind + ":" + customerID
}

// RecordKey is the key of the customer's record hash.
func (s *Redis) RecordKey(customerID string) string { return s.CustomerKey(customerID, "rec") }

// DueKey is the key of the bucket's schedule: a sorted set of customer ids
// scored by NextRefresh in Unix milliseconds. An entry may outlive its
// record (a record forgotten by its TTL), so readers treat ErrNotFound from
// Get as "remove the entry".
func (s *Redis) DueKey(bucket int) string { return s.BucketKeyPrefix(bucket) + "due" }

// DoneChannel is the pub/sub channel on which every completed refresh, Put
// and Delete publishes the customer id.
func (s *Redis) DoneChannel() string { return s.prefix + "done" }

// IndexKey is the key of one of the bucket's state indexes.
func (s *Redis) IndexKey(bucket int, idx Index) string {
	return s.BucketKeyPrefix(bucket) + "idx:" + string(idx)
}

// OutboxKey is the key of the bucket's event outbox.
func (s *Redis) OutboxKey(bucket int) string { return s.BucketKeyPrefix(bucket) + "ev:out" }

// ExpiryKey is the key of the bucket's refresh token expiry schedule.
func (s *Redis) ExpiryKey(bucket int) string { return s.BucketKeyPrefix(bucket) + "ev:rtx" }

// EventsLeaseKey is the key of the bucket's delivery lease.
func (s *Redis) EventsLeaseKey(bucket int) string { return s.BucketKeyPrefix(bucket) + "ev:lease" }

// EventsHintKey is the key of the hint naming buckets with events work.
func (s *Redis) EventsHintKey() string { return s.prefix + "ev:hint" }

// SchedKey is the schedule hint: a sorted set of bucket numbers scored by
// the earliest NextRefresh (Unix ms) the bucket may hold. It is a hint,
// never later than the truth while its writers live (see redis_hint.go).
func (s *Redis) SchedKey() string { return s.prefix + "sched" }

// censusKey is one of the census sets (see the key layout above).
func (s *Redis) censusKey(kind string) string { return s.prefix + "{census}:" + kind }

// GlobalKeys are the keys outside the bucket slots (the schedule hint, the
// census sets and the census backfill's marker, the events hint); they
// hold bucket numbers, customer ids and times, never a token.
func (s *Redis) GlobalKeys() []string {
	return []string{s.SchedKey(), s.censusKey("at"), s.censusKey("ra"), s.censusKey("lease"), s.censusKey("gone"), s.censusBuiltKey(),
		s.EventsHintKey()}
}
