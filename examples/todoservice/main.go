// Command todoservice is the sample student service of the scenarios
// example: a small HTTP + JSON to-do list, kept in the database graderd
// starts beside it (examples/kvdb), which it finds through the variables
// the FIIT tester passes: DATABASE_HOST, DATABASE_PORT, DATABASE_NAME,
// DATABASE_USER and DATABASE_PASSWORD. It listens on PORT (default 8000).
//
// Built with -ldflags "-X main.variant=buggy" it is the buggy variant a
// careless student hands in: PATCH ignores "done", DELETE answers 200 with
// a body instead of 204, and /v1/stats counts the done items wrong.
//
//	GET    /health            "ok"
//	POST   /v1/todos          {"title"} -> 201 {"id", "title", "done", "created_at"}; 400 without a title
//	GET    /v1/todos          every item, by id
//	GET    /v1/todos/{id}     one item; 404 {"error"}
//	PATCH  /v1/todos/{id}     {"done"} -> the item
//	DELETE /v1/todos/{id}     204
//	GET    /v1/stats          {"total", "done"}
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// variant is "correct" or "buggy", set at build time.
var variant = "correct"

// todo is one item.
type todo struct {
	ID        int    `json:"id"`
	Title     string `json:"title"`
	Done      bool   `json:"done"`
	CreatedAt string `json:"created_at"`
}

func main() {
	env := func(k string) string {
		v := os.Getenv(k)
		if v == "" {
			log.Fatalf("todoservice: %s is not set: the grader passes the database's address and credentials", k)
		}
		return v
	}
	db := &kvdb{
		base: fmt.Sprintf("http://%s:%s/%s/", env("DATABASE_HOST"), env("DATABASE_PORT"), env("DATABASE_NAME")),
		user: env("DATABASE_USER"), password: env("DATABASE_PASSWORD"),
	}
	port := os.Getenv("PORT")
	if port == "" {
		port = "8000"
	}
	s := &service{db: db}
	http.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") })
	http.HandleFunc("POST /v1/todos", s.locked(s.create))
	http.HandleFunc("GET /v1/todos", s.locked(s.list))
	http.HandleFunc("GET /v1/todos/{id}", s.locked(s.withItem(s.get)))
	http.HandleFunc("PATCH /v1/todos/{id}", s.locked(s.withItem(s.update)))
	http.HandleFunc("DELETE /v1/todos/{id}", s.locked(s.withItem(s.remove)))
	http.HandleFunc("GET /v1/stats", s.locked(s.stats))
	log.Printf("todoservice (%s) on port %s, database at %s", variant, port, db.base)
	log.Fatal(http.ListenAndServe(":"+port, nil))
}

type service struct {
	mu sync.Mutex // one request at a time: the id counter is read, then written
	db *kvdb
}

// locked serves one request at a time.
func (s *service) locked(h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		h(w, r)
	}
}

// withItem loads the item the path names, or answers 404.
func (s *service) withItem(h func(http.ResponseWriter, *http.Request, todo)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if t, ok := s.load(w, r); ok {
			h(w, r, t)
		}
	}
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, status int, msg string) {
	reply(w, status, map[string]string{"error": msg})
}

func (s *service) create(w http.ResponseWriter, r *http.Request) {
	var in struct{ Title string }
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || strings.TrimSpace(in.Title) == "" {
		fail(w, http.StatusBadRequest, "title is required")
		return
	}
	next := 1
	if b, err := s.db.get("meta/next"); err == nil {
		next, _ = strconv.Atoi(string(b))
	} else if !errors.Is(err, errNotFound) {
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	t := todo{ID: next, Title: in.Title, CreatedAt: time.Now().UTC().Format(time.RFC3339)}
	if err := s.put(t); err != nil {
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	if err := s.db.put("meta/next", []byte(strconv.Itoa(next+1))); err != nil {
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	reply(w, http.StatusCreated, t)
}

func (s *service) put(t todo) error {
	b, _ := json.Marshal(t)
	return s.db.put(fmt.Sprintf("todo/%08d", t.ID), b)
}

func (s *service) load(w http.ResponseWriter, r *http.Request) (todo, bool) {
	id, err := strconv.Atoi(r.PathValue("id"))
	var t todo
	if err == nil {
		var b []byte
		if b, err = s.db.get(fmt.Sprintf("todo/%08d", id)); err == nil {
			err = json.Unmarshal(b, &t)
		}
	}
	switch {
	case errors.Is(err, errNotFound) || errors.Is(err, strconv.ErrSyntax):
		fail(w, http.StatusNotFound, "not found")
		return t, false
	case err != nil:
		fail(w, http.StatusInternalServerError, err.Error())
		return t, false
	}
	return t, true
}

func (s *service) all() ([]todo, error) {
	keys, err := s.db.keys("todo/")
	if err != nil {
		return nil, err
	}
	out := []todo{}
	for _, k := range keys {
		b, err := s.db.get(k)
		if err != nil {
			return nil, err
		}
		var t todo
		if err := json.Unmarshal(b, &t); err != nil {
			return nil, err
		}
		out = append(out, t)
	}
	return out, nil
}

func (s *service) list(w http.ResponseWriter, r *http.Request) {
	all, err := s.all()
	if err != nil {
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	reply(w, http.StatusOK, all)
}

func (s *service) get(w http.ResponseWriter, r *http.Request, t todo) {
	reply(w, http.StatusOK, t)
}

func (s *service) update(w http.ResponseWriter, r *http.Request, t todo) {
	var in struct{ Done *bool }
	if err := json.NewDecoder(r.Body).Decode(&in); err != nil || in.Done == nil {
		fail(w, http.StatusBadRequest, "done is required")
		return
	}
	if variant != "buggy" {
		t.Done = *in.Done
	}
	if err := s.put(t); err != nil {
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	reply(w, http.StatusOK, t)
}

func (s *service) remove(w http.ResponseWriter, r *http.Request, t todo) {
	if err := s.db.del(fmt.Sprintf("todo/%08d", t.ID)); err != nil {
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	if variant == "buggy" {
		reply(w, http.StatusOK, map[string]bool{"deleted": true})
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (s *service) stats(w http.ResponseWriter, r *http.Request) {
	all, err := s.all()
	if err != nil {
		fail(w, http.StatusInternalServerError, err.Error())
		return
	}
	done := 0
	for _, t := range all {
		if t.Done || variant == "buggy" {
			done++
		}
	}
	reply(w, http.StatusOK, map[string]int{"total": len(all), "done": done})
}

// kvdb is a client of examples/kvdb.
type kvdb struct {
	base, user, password string
}

var errNotFound = errors.New("not found")

func (k *kvdb) do(method, key string, body []byte) ([]byte, error) {
	req, err := http.NewRequest(method, k.base+key, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.SetBasicAuth(k.user, k.password)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("database: %w", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	switch {
	case err != nil:
		return nil, err
	case resp.StatusCode == http.StatusNotFound:
		return nil, errNotFound
	case resp.StatusCode >= 300:
		return nil, fmt.Errorf("database: %s: %s", resp.Status, strings.TrimSpace(string(b)))
	}
	return b, nil
}

func (k *kvdb) get(key string) ([]byte, error) { return k.do(http.MethodGet, key, nil) }
func (k *kvdb) put(key string, v []byte) error {
	_, err := k.do(http.MethodPut, key, v)
	return err
}
func (k *kvdb) del(key string) error {
	_, err := k.do(http.MethodDelete, key, nil)
	return err
}

func (k *kvdb) keys(prefix string) ([]string, error) {
	b, err := k.do(http.MethodGet, "?prefix="+prefix, nil)
	if err != nil {
		return nil, err
	}
	var out struct{ Keys []string }
	err = json.Unmarshal(b, &out)
	return out.Keys, err
}
