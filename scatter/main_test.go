package scatter_test

import (
	"testing"

	"go.uber.org/goleak"
)

// Every leaf attempt runs on a goroutine of the request; none may outlive
// the tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
