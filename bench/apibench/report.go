package apibench

import (
	"fmt"
	"io"
)

// Write prints the result as markdown.
func (r Result) Write(w io.Writer) error {
	p := func(format string, args ...any) { fmt.Fprintf(w, format, args...) }
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
	p("\nCrypto only: token.Opener.Open (one RSA-OAEP-256 decryption, one RS512 verification, claim checks) on\n")
	p("pre-sealed tokens, one goroutine per core. sendjob: %d HTTP/1.1 keep-alive clients POSTing pre-sealed tokens\n", r.Clients)
	p("(sealing is the platform's cost and is not timed) to the broker in the same process: TLS 1.3, grpc-gateway,\n")
	p("token checks, tag and type checks, the jti and the job committed together (group commit, synchronous=FULL).\n")
	p("\n### Result callbacks\n\n")
	p("%d callbacks (2048-bit keys: sign RS512, encrypt RSA-OAEP-256) delivered to a local HTTP receiver that\n", r.CallbackCount)
	p("answers 204: **%.0f callbacks/s**, each acknowledged delivery recorded in SQLite.\n", r.CallbackRate)
	return nil
}
