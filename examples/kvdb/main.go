// Command kvdb is the database of the scenarios example: a small key-value
// store over HTTP that stands in for PostgreSQL, which cannot be pulled
// where no registry can be reached. Like a database image it takes its
// user, password and database name from its environment (KVDB_USER,
// KVDB_PASSWORD, KVDB_DATABASE), listens on KVDB_PORT (default 5984), and
// writes a journal to its data directory (KVDB_DATA, default /data), which
// must be writable: graderd gives it a tmpfs there, as its configuration
// says. Clients authenticate with HTTP basic auth.
//
//	PUT    /DATABASE/KEY     store the body under KEY
//	GET    /DATABASE/KEY     the value, or 404
//	DELETE /DATABASE/KEY     remove it
//	GET    /DATABASE?prefix= {"keys": [...]}, sorted
package main

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
)

func main() {
	user, password, database := os.Getenv("KVDB_USER"), os.Getenv("KVDB_PASSWORD"), os.Getenv("KVDB_DATABASE")
	if user == "" || password == "" || database == "" {
		log.Fatal("kvdb: set KVDB_USER, KVDB_PASSWORD and KVDB_DATABASE")
	}
	port := os.Getenv("KVDB_PORT")
	if port == "" {
		port = "5984"
	}
	data := os.Getenv("KVDB_DATA")
	if data == "" {
		data = "/data"
	}
	journal, err := os.OpenFile(filepath.Join(data, "journal.log"), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		log.Fatalf("kvdb: the data directory must be writable: %v", err)
	}
	db := &store{values: map[string][]byte{}, journal: journal}
	log.Printf("kvdb: database %s for user %s on port %s", database, user, port)
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		if !ok || subtle.ConstantTimeCompare([]byte(u), []byte(user)) != 1 || subtle.ConstantTimeCompare([]byte(p), []byte(password)) != 1 {
			http.Error(w, "wrong user or password", http.StatusUnauthorized)
			return
		}
		name, key, _ := strings.Cut(strings.TrimPrefix(r.URL.Path, "/"), "/")
		if name != database {
			http.Error(w, "no such database", http.StatusNotFound)
			return
		}
		db.serve(w, r, key)
	})
	log.Fatal(http.ListenAndServe(":"+port, nil))
}

type store struct {
	mu      sync.Mutex
	values  map[string][]byte
	journal *os.File
}

func (s *store) serve(w http.ResponseWriter, r *http.Request, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case key == "" && r.Method == http.MethodGet:
		keys := []string{}
		for k := range s.values {
			if strings.HasPrefix(k, r.URL.Query().Get("prefix")) {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		_ = json.NewEncoder(w).Encode(map[string][]string{"keys": keys})
	case r.Method == http.MethodGet:
		v, ok := s.values[key]
		if !ok {
			http.Error(w, "no such key", http.StatusNotFound)
			return
		}
		_, _ = w.Write(v)
	case r.Method == http.MethodPut:
		v, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.values[key] = v
		fmt.Fprintf(s.journal, "put %q %d\n", key, len(v))
		w.WriteHeader(http.StatusNoContent)
	case r.Method == http.MethodDelete:
		delete(s.values, key)
		fmt.Fprintf(s.journal, "delete %q\n", key)
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
	}
}
