package console

import "net/http"

// routes registers every page. Reads are GET, changes are POST (behind the
// anti-forgery token); the admin service decides who may do what.
func (c *Console) routes() {
	m := http.NewServeMux()
	m.Handle("GET /static/", c.static)
	m.HandleFunc("GET /login", c.getLogin)
	m.HandleFunc("POST /login", c.postLogin)
	m.HandleFunc("POST /login/cert", c.postCertLogin)
	m.Handle("POST /logout", c.authed(c.postLogout))

	m.Handle("GET /{$}", c.authed(c.overviewPage))
	m.Handle("GET /servers", c.authed(c.serversPage))
	m.Handle("POST /servers/{name}/{action}", c.authed(c.serverAction))
	m.Handle("GET /jobs", c.authed(c.jobsPage))
	m.Handle("GET /jobs/{id}", c.authed(c.jobPage))
	m.Handle("POST /jobs/{id}/{action}", c.authed(c.jobAction))
	m.Handle("GET /bulk", c.authed(c.bulkConfirm))
	m.Handle("POST /bulk", c.authed(c.bulkAction))
	m.Handle("GET /deliveries", c.authed(c.deliveriesPage))
	m.Handle("POST /deliveries/redeliver", c.authed(c.redeliver))
	m.Handle("GET /registry", c.authed(c.registryPage))
	m.Handle("POST /registry/{kind}/{action}", c.authed(c.registryAction))
	m.Handle("GET /test", c.authed(c.testPage))
	m.Handle("POST /test", c.authed(c.submitTest))
	m.Handle("GET /sessions", c.authed(c.sessionsPage))
	m.Handle("POST /sessions/{id}/revoke", c.authed(c.revokeSession))
	m.Handle("GET /live/{view}", c.authed(c.live))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		c.errorPage(w, r, http.StatusNotFound, "There is no such page in the console.")
	})
	c.mux = http.NewServeMux()
	c.mux.Handle("/", secure(m))
}
