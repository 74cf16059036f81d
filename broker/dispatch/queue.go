package dispatch

import (
	"container/heap"
	"slices"
	"strconv"
	"strings"
)

// qjob is what the queue keeps of one waiting job. It is small on purpose:
// a million queued jobs cost a few tens of megabytes, and their data stays
// in the database until a server takes them.
type qjob struct {
	id          int64
	created     int64 // Unix ms; age order within one platform's turn
	requeuedAt  int64 // Unix ms of the last requeue; 0 if never
	timeoutMS   int64
	attempts    int32
	maxAttempts int32
	avoid       int64 // server id that last failed it; 0 for none
}

// fifo is a growable ring of jobs in arrival order.
type fifo struct {
	buf        []qjob
	head, size int
}

func (f *fifo) push(j qjob) {
	if f.size == len(f.buf) {
		n := max(16, 2*len(f.buf))
		buf := make([]qjob, n)
		for i := 0; i < f.size; i++ {
			buf[i] = f.buf[(f.head+i)%len(f.buf)]
		}
		f.buf, f.head = buf, 0
	}
	f.buf[(f.head+f.size)%len(f.buf)] = j
	f.size++
}

func (f *fifo) peek() *qjob { return &f.buf[f.head] }

func (f *fifo) pop() qjob {
	j := f.buf[f.head]
	f.buf[f.head] = qjob{}
	f.head = (f.head + 1) % len(f.buf)
	f.size--
	if f.size == 0 && len(f.buf) > 1024 {
		// Give a drained burst's memory back.
		f.buf, f.head = nil, 0
	}
	return j
}

// oldest is a min-heap by job id of requeued jobs: they are older than what
// the fifo holds and go first.
type oldest []qjob

func (h oldest) Len() int           { return len(h) }
func (h oldest) Less(i, k int) bool { return h[i].id < h[k].id }
func (h oldest) Swap(i, k int)      { h[i], h[k] = h[k], h[i] }
func (h *oldest) Push(x any)        { *h = append(*h, x.(qjob)) }
func (h *oldest) Pop() any {
	old := *h
	j := old[len(old)-1]
	*h = old[:len(old)-1]
	return j
}

// platQueue is one platform's jobs at one priority in one class.
type platQueue struct {
	platform int64
	fresh    fifo
	again    oldest
}

func (p *platQueue) len() int { return p.fresh.size + len(p.again) }

// head returns the oldest job and whether it came from the requeued heap.
func (p *platQueue) head() (*qjob, bool) {
	if len(p.again) > 0 && (p.fresh.size == 0 || p.again[0].id < p.fresh.peek().id) {
		return &p.again[0], true
	}
	if p.fresh.size > 0 {
		return p.fresh.peek(), false
	}
	return nil, false
}

func (p *platQueue) pop(fromAgain bool) qjob {
	if fromAgain {
		return heap.Pop(&p.again).(qjob)
	}
	return p.fresh.pop()
}

func (p *platQueue) push(j qjob) {
	if j.requeuedAt != 0 {
		heap.Push(&p.again, j)
		return
	}
	p.fresh.push(j)
}

// level is one priority within a class.
type level struct {
	prio  int
	plats map[int64]*platQueue
	n     int
}

// class is the set of jobs that the same server types may take: jobs with
// equal eligible-type sets share a class. There are few classes (one per
// distinct tag set in use), so looking at each is cheap. Jobs of a pull
// queue (XQueue's queue_name) have classes of their own, so that a client
// pulling the queue finds them and nothing else; graderd's servers take
// them like any other job their type covers.
type class struct {
	key    string
	types  []int64
	queue  string // the pull queue of its jobs; "" for none
	levels map[int]*level
	prios  []int // priorities with jobs, highest first
	n      int   // jobs queued, including ones cancelled but not yet skipped
	// cancelled counts the jobs queued here that were cancelled since: they
	// stay until a server reaches them, then are dropped.
	cancelled int
}

// waiting is how many of the class's jobs wait for a server.
func (c *class) waiting() int { return max(c.n-c.cancelled, 0) }

func classKey(types []int64, queue string) string {
	ts := slices.Clone(types)
	slices.Sort(ts)
	parts := make([]string, len(ts))
	for i, t := range ts {
		parts[i] = strconv.FormatInt(t, 10)
	}
	key := strings.Join(parts, ",")
	if queue != "" {
		key += "|" + queue
	}
	return key
}

func newClass(types []int64, queue string) *class {
	ts := slices.Clone(types)
	slices.Sort(ts)
	return &class{key: classKey(ts, queue), types: ts, queue: queue, levels: make(map[int]*level)}
}

func (c *class) push(prio int, platform int64, j qjob) {
	lv := c.levels[prio]
	if lv == nil {
		lv = &level{prio: prio, plats: make(map[int64]*platQueue)}
		c.levels[prio] = lv
		i, _ := slices.BinarySearchFunc(c.prios, prio, func(a, b int) int { return b - a })
		c.prios = slices.Insert(c.prios, i, prio)
	}
	pq := lv.plats[platform]
	if pq == nil {
		pq = &platQueue{platform: platform}
		lv.plats[platform] = pq
	}
	pq.push(j)
	lv.n++
	c.n++
}

// take removes the head of pq from level lv, dropping empty containers.
func (c *class) take(lv *level, pq *platQueue, fromAgain bool) qjob {
	j := pq.pop(fromAgain)
	lv.n--
	c.n--
	if pq.len() == 0 {
		delete(lv.plats, pq.platform)
	}
	if lv.n == 0 {
		delete(c.levels, lv.prio)
		if i := slices.Index(c.prios, lv.prio); i >= 0 {
			c.prios = slices.Delete(c.prios, i, i+1)
		}
	}
	return j
}

// candidate is the best job a class offers one server.
type candidate struct {
	c         *class
	lv        *level
	pq        *platQueue
	fromAgain bool
	j         *qjob
}

// better orders candidates: priority, then the platform whose turn is
// longest past (fair turns between platforms), then age.
func better(a, b *candidate, turn map[int64]uint64) bool {
	if b == nil {
		return true
	}
	if a.lv.prio != b.lv.prio {
		return a.lv.prio > b.lv.prio
	}
	ta, tb := turn[a.pq.platform], turn[b.pq.platform]
	if ta != tb {
		return ta < tb
	}
	return a.j.id < b.j.id
}
