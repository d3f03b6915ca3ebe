package sink

import (
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/types"
)

// TestTimeAttribute: the time attribute's text, as both writers make it,
// is sdk-go's canonical form, and maxLen bounds it for the years 0 to 9999.
func TestTimeAttribute(t *testing.T) {
	east := time.FixedZone("UTC+5:30", 5*3600+1800)
	for _, tm := range []time.Time{
		time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 6000, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 123456789, east), // written in UTC
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(0, 1, 1, 0, 0, 0, 1, time.UTC),
		{},
	} {
		a := attribute{name: "time", time: &tm}
		want := types.FormatTime(tm)
		if got := a.text(); got != want {
			t.Errorf("text of %v = %q, want %q", tm, got, want)
		}
		if got := string(a.appendText([]byte("x"))); got != "x"+want {
			t.Errorf("appendText of %v = %q, want %q", tm, got, "x"+want)
		}
		if len(want) > a.maxLen() {
			t.Errorf("maxLen %d < len(%q)", a.maxLen(), want)
		}
	}
	// A time past year 9999 is still written whole.
	far := time.Date(12345, 6, 7, 8, 9, 10, 123456789, time.UTC)
	a := attribute{name: "time", time: &far}
	if got, want := a.text(), types.FormatTime(far); got != want {
		t.Errorf("text of %v = %q, want %q", far, got, want)
	}
}
