package apibench

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/pprof/profile"
)

// The pprof labels that split a CPU profile of a sendjob slice: the broker
// is started under brokerLabel, so every goroutine it starts (HTTP
// connections, the dispatcher's writer) carries it; the HTTP clients carry
// clientLabel, and so do the connection goroutines net/http starts for
// them. What carries neither is the Go runtime's own work (garbage
// collection, the scheduler), which both sides cause.
const (
	labelKey    = "apibench"
	brokerValue = "broker"
	clientValue = "client"
)

// Functions that split the broker's samples further. openFunc is what
// token.Opener.Open, OpenWith (the platform service's way in) and
// OpenCallback all run.
const (
	openFunc   = "github.com/gradebroker/gradebroker/broker/token.(*Opener).open"
	writerFunc = "github.com/gradebroker/gradebroker/broker/dispatch.(*writer).run"
)

// cpuSplit is CPU time from profiles, by who spent it.
type cpuSplit struct {
	Open    time.Duration // broker: token.Opener.Open, the crypto-only work
	Writer  time.Duration // broker: the dispatcher's writer (SQLite)
	Broker  time.Duration // broker: everything else (HTTP, TLS, gateway, JSON, the service)
	Clients time.Duration // the benchmark's HTTP clients
	Runtime time.Duration // unlabelled: GC, scheduler
}

func (c cpuSplit) brokerTotal() time.Duration { return c.Open + c.Writer + c.Broker }

func (c cpuSplit) total() time.Duration { return c.brokerTotal() + c.Clients + c.Runtime }

func (c *cpuSplit) add(d cpuSplit) {
	c.Open += d.Open
	c.Writer += d.Writer
	c.Broker += d.Broker
	c.Clients += d.Clients
	c.Runtime += d.Runtime
}

// per divides every part by n.
func (c cpuSplit) per(n int64) cpuSplit {
	if n <= 0 {
		return cpuSplit{}
	}
	d := time.Duration(n)
	return cpuSplit{Open: c.Open / d, Writer: c.Writer / d, Broker: c.Broker / d, Clients: c.Clients / d, Runtime: c.Runtime / d}
}

// splitProfile reads a CPU profile as runtime/pprof writes it and adds up
// its CPU time by label and function.
func splitProfile(data []byte) (cpuSplit, error) {
	prof, err := profile.ParseData(data)
	if err != nil {
		return cpuSplit{}, fmt.Errorf("profile: %w", err)
	}
	cpu := -1
	for i, t := range prof.SampleType {
		if t.Type == "cpu" {
			cpu = i
		}
	}
	if cpu < 0 {
		return cpuSplit{}, errors.New("profile: not a CPU profile")
	}
	var out cpuSplit
	for _, s := range prof.Sample {
		d := time.Duration(s.Value[cpu])
		var who string
		if v := s.Label[labelKey]; len(v) > 0 {
			who = v[0]
		}
		switch who {
		case clientValue:
			out.Clients += d
			continue
		case brokerValue:
		default:
			out.Runtime += d
			continue
		}
		part := &out.Broker
	frames:
		for _, loc := range s.Location {
			for _, line := range loc.Line {
				if line.Function == nil {
					continue
				}
				switch name := line.Function.Name; {
				case name == openFunc:
					part = &out.Open
					break frames
				case name == writerFunc, strings.HasPrefix(name, writerFunc+"."):
					part = &out.Writer
					break frames
				}
			}
		}
		*part += d
	}
	return out, nil
}
