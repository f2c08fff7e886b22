package wallet

import "errors"

// ValidCustomerID applies the contract's rule: 1 to 64 printable ASCII
// characters other than space, @ # ? / %.
func ValidCustomerID(id string) error {
	if id == "" || len(id) > 64 {
		return errors.New("customer id must be 1 to 64 characters")
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if c <= ' ' || c > '~' {
			return errors.New("customer id must be printable ASCII without spaces")
		}
		switch c {
		case '@', '#', '?', '/', '%':
			return errors.New("customer id must not contain @ # ? / %")
		}
	}
	return nil
}

// ValidField applies the protocol's field rule to a string field: at most
// max characters, none of the special characters @ # ? and no control
// characters.
func ValidField(s string, max int) error {
	n := 0
	for _, r := range s {
		n++
		if r < ' ' || r == 0x7f {
			return errors.New("control character")
		}
		switch r {
		case '@', '#', '?':
			return errors.New("forbidden character (@ # ?)")
		}
	}
	if n > max {
		return errors.New("too long")
	}
	return nil
}
