package tokencache

import "testing"

func TestWatchHubBound(t *testing.T) {
	var h watchHub
	stops := make([]func(), 0, maxWatchers)
	for range maxWatchers {
		_, stop := h.add("a")
		stops = append(stops, stop)
	}
	over, stopOver := h.add("a")
	h.notify("a")
	select {
	case <-over:
		t.Fatal("a watch past the bound was notified")
	default:
	}
	stopOver() // harmless
	if h.count() != maxWatchers {
		t.Fatalf("count %d, want %d", h.count(), maxWatchers)
	}
	for _, stop := range stops {
		stop()
		stop()
	}
	if h.count() != 0 || len(h.byID) != 0 {
		t.Fatalf("after stopping all: count %d, %d customers", h.count(), len(h.byID))
	}
	ch, stop := h.add("a")
	defer stop()
	h.notify("a")
	h.notify("a") // folded into the one waiting, never blocks
	<-ch
	select {
	case <-ch:
		t.Fatal("two notices buffered")
	default:
	}
}
