package apibench

import (
	"fmt"
	"io"
	"time"
)

// Write prints the result as markdown.
func (r Result) Write(w io.Writer) error {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
	us := func(d time.Duration) string {
		if d <= 0 {
			return "–"
		}
		return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
	}
	pct := func(f float64) string {
		if f < 0 {
			return "–"
		}
		return fmt.Sprintf("%.1f %%", 100*f)
	}
	p("\n### Platform API: REST sendjob over HTTPS with real tokens, %d concurrent clients\n\n", r.Clients)
	p("| RSA keys | crypto only (decrypt + verify) | sendjob through the gateway | API / crypto | target ≥ 80 %% | sendjobs, %d jobs per token | failed requests |\n", r.BatchSize)
	p("| --- | ---: | ---: | ---: | --- | ---: | ---: |\n")
	for _, row := range r.Rows {
		ok := "yes"
		if row.Ratio < 0.8 {
			ok = "**no**"
		}
		p("| %d bits | %.0f tokens/s | %.0f requests/s | %.0f %% | %s | %.0f jobs/s | %d |\n",
			row.Bits, row.CryptoRate, row.SendJobRate, 100*row.Ratio, ok, row.BatchJobs, row.Errors)
	}

	p("\nCPU time per request, measured in the same slices:\n\n")
	if r.Child {
		p("| RSA keys | crypto only, per token | broker process, per sendjob | crypto / broker | benchmark process (clients) | jobs per SQLite commit | idle: crypto / sendjob |\n")
		p("| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, row := range r.Rows {
			p("| %d bits | %s | %s | %.0f %% | %s | %.1f | %s / %s |\n", row.Bits, us(row.CryptoCPU), us(row.BrokerCPU),
				100*row.CPURatio, us(row.ClientCPU), row.JobsPerCommit, pct(row.CryptoIdle), pct(row.SendJobIdle))
		}
	} else {
		p("| RSA keys | crypto only, per token | broker, per sendjob | of it: Open / SQLite writer / the rest | crypto / broker | clients | Go runtime (shared) | jobs per SQLite commit | idle: crypto / sendjob |\n")
		p("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
		for _, row := range r.Rows {
			rest := row.BrokerCPU - row.Open - row.Writer
			p("| %d bits | %s | %s | %s / %s / %s | %.0f %% | %s | %s | %.1f | %s / %s |\n", row.Bits, us(row.CryptoCPU),
				us(row.BrokerCPU), us(row.Open), us(row.Writer), us(rest), 100*row.CPURatio, us(row.ClientCPU),
				us(row.RuntimeCPU), row.JobsPerCommit, pct(row.CryptoIdle), pct(row.SendJobIdle))
		}
	}

	slice := r.Window / time.Duration(max(r.Rounds, 1))
	p("\nCrypto only: token.Opener.Open (one RSA-OAEP-256 decryption, one RS512 verification, claim checks) on\n")
	p("pre-sealed tokens, one goroutine per core. sendjob: %d HTTP/1.1 keep-alive clients POSTing pre-sealed tokens\n", r.Clients)
	p("(sealing is the platform's cost and is not timed; bodies are made beforehand) to the broker: TLS 1.3,\n")
	p("grpc-gateway, token checks, tag and type checks, the jti and the job committed together (group commit,\n")
	p("synchronous=FULL). The two are measured in turn, %d slices of %s each, so that both see the machine in the\n", r.Rounds, slice)
	p("same state; each sendjob slice is counted once its clients have had answers (steady state).\n")
	if r.Child {
		p("The broker ran in a child process (`broker serve` defaults: log at info, to a file) and its CPU time is\n")
		p("its own; the clients' is the benchmark process's. Both share the same cores, and switching between the\n")
		p("two processes makes each request cost more CPU on both sides than it does in one process.\n")
	} else {
		p("The broker ran in the benchmark's process (log at info, discarded). Its CPU time comes from CPU profiles\n")
		p("of the counted part of each sendjob slice: the samples of the goroutines the broker started, split into\n")
		p("token.Opener.Open, the dispatcher's writer (SQLite, without the kernel's share of its fsyncs) and the rest\n")
		p("(HTTP, TLS, gateway, JSON, the service); the clients' goroutines are labelled apart, and the Go runtime's\n")
		p("own work (GC, scheduler) is shown beside. Idle is the machine's CPU time left idle while each ran.\n")
	}
	p("\n### Result callbacks\n\n")
	p("%d callbacks (2048-bit keys: sign RS512, encrypt RSA-OAEP-256) delivered to a local HTTP receiver that\n", r.CallbackCount)
	p("answers 204: **%.0f callbacks/s**, each acknowledged delivery recorded in SQLite.\n", r.CallbackRate)
	return nil
}
