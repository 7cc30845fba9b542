package external_test

import (
	"errors"
	"unicode/utf8"
)

func errorsAs[T error](err error, target *T) bool { return errors.As(err, target) }

func utf8Valid(s string) bool { return utf8.ValidString(s) }
