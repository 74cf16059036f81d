package store

import (
	"errors"
	"slices"
	"testing"

	"github.com/gradebroker/gradebroker/broker"
)

func TestListPage(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		limit     int
		beforeID  int64
		wantLimit int
	}{{0, 0, 50}, {7, 0, 7}, {500, 9, 100}} {
		p, err := newListPage(c.limit, c.beforeID, 50, 100)
		if err != nil {
			t.Fatal(err)
		}
		p.and("x.state = ?", 2)
		q, args := p.query("SELECT * FROM x", "x.id", c.beforeID)
		wantQ, wantArgs := "SELECT * FROM x WHERE x.state = ? ORDER BY x.id DESC LIMIT ?", []any{2, c.wantLimit}
		if c.beforeID != 0 {
			wantQ = "SELECT * FROM x WHERE x.state = ? AND x.id < ? ORDER BY x.id DESC LIMIT ?"
			wantArgs = []any{2, c.beforeID, c.wantLimit}
		}
		if q != wantQ || !slices.Equal(args, wantArgs) {
			t.Errorf("limit %d before %d: %q %v, want %q %v", c.limit, c.beforeID, q, args, wantQ, wantArgs)
		}
	}
	if q, _ := (&listPage{limit: 1}).query("SELECT 1", "id", 0); q != "SELECT 1 ORDER BY id DESC LIMIT ?" {
		t.Errorf("no conditions: %q", q)
	}
	for _, bad := range [][2]int64{{-1, 0}, {0, -1}} {
		if _, err := newListPage(int(bad[0]), bad[1], 50, 100); !errors.Is(err, broker.ErrInvalid) {
			t.Errorf("limit %d before %d: %v, want ErrInvalid", bad[0], bad[1], err)
		}
	}
}
