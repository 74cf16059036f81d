package layout

import (
	"bufio"
	"bytes"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/gradebroker/gradebroker"

// pkg is one package of the module as `go list` sees its non-test code.
type pkg struct {
	path    string   // without the module prefix: "broker/store"
	imports []string // direct imports, the module's without its prefix
	deps    []string // every package it depends on, the same way
}

// graph lists the module's packages. Test files are left out: the rules are
// about the code that ships, and a test may reach across to set things up
// (broker/dispatch's tests run a graderd).
func graph(t *testing.T) []pkg {
	t.Helper()
	cmd := exec.Command("go", "list", "-f", "{{.ImportPath}}\t{{join .Imports \" \"}}\t{{join .Deps \" \"}}", module+"/...")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list (the go command must be on PATH): %v\n%s", err, stderr.String())
	}
	trim := func(paths string) []string {
		var out []string
		for _, p := range strings.Fields(paths) {
			if p == module {
				p = "."
			}
			out = append(out, strings.TrimPrefix(p, module+"/"))
		}
		return out
	}
	var pkgs []pkg
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		f := strings.Split(sc.Text(), "\t")
		if len(f) != 3 {
			t.Fatalf("go list printed %q", sc.Text())
		}
		pkgs = append(pkgs, pkg{path: trim(f[0])[0], imports: trim(f[1]), deps: trim(f[2])})
	}
	if len(pkgs) < 20 {
		t.Fatalf("go list found %d packages of %s; is the test running inside the module?", len(pkgs), module)
	}
	return pkgs
}

// under reports whether path is dir or inside it.
func under(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, dir+"/")
}

// rule is one sentence of CONTRIBUTING.md's import rules: the packages it
// governs (applies), and what none of them may use (forbidden), among its
// direct imports or, when transitive, among all it depends on.
type rule struct {
	says       string
	applies    func(path string) bool
	forbidden  func(imp string) bool
	transitive bool
}

// home is "each technology has one home": outside homes, nothing imports
// the packages of tech, those under prefixes.
func home(tech string, homes []string, prefixes ...string) rule {
	verb := "imports"
	if len(homes) > 1 {
		verb = "import"
	}
	return rule{
		says: fmt.Sprintf("only %s %s %s", strings.Join(homes, " and "), verb, tech),
		applies: func(p string) bool {
			return !slices.Contains(homes, p)
		},
		forbidden: func(imp string) bool {
			return slices.ContainsFunc(prefixes, func(pre string) bool { return under(imp, pre) })
		},
	}
}

// edgeAdapters are the packages that translate an outside protocol into the
// broker's services. A console or a compatibility layer joins the list.
var edgeAdapters = []string{"broker/platform", "broker/adminapi", "broker/graderapi", "broker/xqueue"}

// serviceAdapters are adapters over one edge adapter's service: another
// protocol for the same requests. Each depends on its service's package
// and on no other edge adapter.
var serviceAdapters = map[string]string{
	"broker/console":     "broker/adminapi",
	"broker/graderqueue": "broker/platform",
}

// serviceAdapterRule is the rule of serviceAdapters' adapter p.
func serviceAdapterRule(p string) rule {
	return rule{
		says:       p + " translates into " + serviceAdapters[p] + "'s service and depends on no other edge adapter",
		applies:    func(q string) bool { return q == p },
		forbidden:  func(imp string) bool { return imp != serviceAdapters[p] && slices.Contains(edgeAdapters, imp) },
		transitive: true,
	}
}

var rules = []rule{
	serviceAdapterRule("broker/console"),
	serviceAdapterRule("broker/graderqueue"),
	{
		says:       "graderd and its packages depend on nothing under broker/: what graderd shares with the broker lives in gen, certs, wakeupmsg or internal",
		applies:    func(p string) bool { return under(p, "graderd") },
		forbidden:  func(imp string) bool { return under(imp, "broker") },
		transitive: true,
	},
	home("crypto/tls (TLS configurations are made in certs, TLS 1.3)", []string{"certs"}, "crypto/tls"),
	home("database/sql and the SQLite driver", []string{"broker/store"}, "database/sql", "github.com/mattn/go-sqlite3"),
	home("go-jose", []string{"broker/token", "broker/token/tokentest"}, "github.com/go-jose/go-jose"),
	home("client-go and the Kubernetes API modules", []string{"graderd/executor/kubernetes", "graderd/executor/kubernetes/kubetest", "bench/kubebench"}, "k8s.io", "sigs.k8s.io"),
	home("controller-runtime (envtest)", []string{"graderd/executor/kubernetes/kubetest"}, "sigs.k8s.io/controller-runtime"),
	{
		says:      "envtest's API server is for tests: kubetest is imported by test files and the benchmark only",
		applies:   func(p string) bool { return !under(p, "bench") },
		forbidden: func(imp string) bool { return imp == "graderd/executor/kubernetes/kubetest" },
	},
	home("the Docker Engine API client", []string{"graderd/executor/docker"}, "github.com/moby/moby"),
	{
		says:       "an edge adapter (" + strings.Join(edgeAdapters, ", ") + ") depends on no other: what two of them share belongs lower down (broker, broker/protoconv, broker/rpcstatus)",
		applies:    func(p string) bool { return slices.Contains(edgeAdapters, p) },
		forbidden:  func(imp string) bool { return slices.Contains(edgeAdapters, imp) },
		transitive: true,
	},
}

// TestImportRules fails, naming the rule and the package, when a package
// imports what the layout forbids it.
func TestImportRules(t *testing.T) {
	t.Parallel()
	pkgs := graph(t)
	for _, r := range rules {
		for _, p := range pkgs {
			if !r.applies(p.path) {
				continue
			}
			uses, how := p.imports, "imports"
			if r.transitive {
				uses, how = p.deps, "depends on"
			}
			for _, imp := range uses {
				if imp != p.path && r.forbidden(imp) {
					t.Errorf("%s %s %s, but %s", p.path, how, imp, r.says)
				}
			}
		}
	}
}

// TestRulesApply guards the rules themselves: each governs at least one
// package that exists, so that a rename cannot turn one into a rule about
// nothing.
func TestRulesApply(t *testing.T) {
	t.Parallel()
	pkgs := graph(t)
	for _, r := range rules {
		if !slices.ContainsFunc(pkgs, func(p pkg) bool { return r.applies(p.path) }) {
			t.Errorf("the rule %q governs no package", r.says)
		}
	}
	for _, want := range append([]string{"graderd", "certs", "broker/store", "broker/token"}, edgeAdapters...) {
		if !slices.ContainsFunc(pkgs, func(p pkg) bool { return p.path == want }) {
			t.Errorf("package %s, which the rules name, does not exist", want)
		}
	}
}
