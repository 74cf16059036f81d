package console

import (
	"net/http"
	"strconv"
	"strings"

	gradebrokerv1 "github.com/gradebroker/gradebroker/gen/gradebroker/v1"
)

// registryData is the registry page: everything an operator registers.
type registryData struct {
	Tags      []*gradebrokerv1.Tag
	Types     []*gradebrokerv1.ServerType
	Servers   []*gradebrokerv1.Server
	Platforms []*gradebrokerv1.Platform
}

func (c *Console) registryPage(w http.ResponseWriter, r *http.Request, q request) {
	var d registryData
	tags, err := c.admin.ListTags(q.ctx, &gradebrokerv1.ListTagsRequest{})
	if err == nil {
		d.Tags = tags.GetTags()
		var types *gradebrokerv1.ListServerTypesResponse
		if types, err = c.admin.ListServerTypes(q.ctx, &gradebrokerv1.ListServerTypesRequest{}); err == nil {
			d.Types = types.GetServerTypes()
		}
	}
	if err == nil {
		var srvs *gradebrokerv1.ListServersResponse
		if srvs, err = c.admin.ListServers(q.ctx, &gradebrokerv1.ListServersRequest{}); err == nil {
			d.Servers = srvs.GetServers()
		}
	}
	if err == nil {
		var ps *gradebrokerv1.ListPlatformsResponse
		if ps, err = c.admin.ListPlatforms(q.ctx, &gradebrokerv1.ListPlatformsRequest{}); err == nil {
			d.Platforms = ps.GetPlatforms()
		}
	}
	if err != nil {
		c.apiError(w, r, err)
		return
	}
	c.render(w, r, http.StatusOK, "registry", c.frame(w, r, q, page{Title: "Registry", Nav: "registry", Data: d}))
}

// splitList reads a comma- or space-separated list from a form field.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\r' || r == '\t' })
}

// optional returns a pointer to a form field's value, or nil when the
// form does not carry the field: an update changes only what it names.
func optional(r *http.Request, name string) *string {
	if _, ok := r.PostForm[name]; !ok {
		return nil
	}
	v := strings.TrimSpace(r.PostFormValue(name))
	return &v
}

// registryAction adds, changes or removes one thing, through the admin
// API's calls: their checks and messages are the console's.
func (c *Console) registryAction(w http.ResponseWriter, r *http.Request, q request) {
	const back = "/registry"
	name := strings.TrimSpace(r.PostFormValue("name"))
	kind, action := r.PathValue("kind"), r.PathValue("action")
	var err error
	msg := strings.TrimSuffix(kind, "s") + " " + name + " "
	switch kind + "/" + action {
	case "tags/add":
		_, err = c.admin.AddTag(q.ctx, &gradebrokerv1.AddTagRequest{Name: name, Description: r.PostFormValue("description")})
		msg += "added."
	case "tags/remove":
		_, err = c.admin.RemoveTag(q.ctx, &gradebrokerv1.RemoveTagRequest{Name: name})
		msg += "removed."
	case "types/add":
		_, err = c.admin.AddServerType(q.ctx, &gradebrokerv1.AddServerTypeRequest{Name: name, Tags: splitList(r.PostFormValue("tags"))})
		msg = "server type " + name + " added."
	case "types/update":
		_, err = c.admin.UpdateServerType(q.ctx, &gradebrokerv1.UpdateServerTypeRequest{Name: name, Tags: splitList(r.PostFormValue("tags"))})
		msg = "server type " + name + " changed."
	case "types/remove":
		_, err = c.admin.RemoveServerType(q.ctx, &gradebrokerv1.RemoveServerTypeRequest{Name: name})
		msg = "server type " + name + " removed."
	case "servers/add":
		var n uint64
		n, err = strconv.ParseUint(strings.TrimSpace(r.PostFormValue("max_jobs")), 10, 32)
		if err == nil {
			_, err = c.admin.AddServer(q.ctx, &gradebrokerv1.AddServerRequest{Name: name, CertificatePem: r.PostFormValue("certificate"),
				Type: strings.TrimSpace(r.PostFormValue("type")), MaxConcurrentJobs: uint32(n), WakeupUrl: strings.TrimSpace(r.PostFormValue("wakeup_url"))})
		} else {
			c.flash(w, "error", "max jobs must be a whole number")
			http.Redirect(w, r, back, http.StatusSeeOther)
			return
		}
		msg += "added."
	case "servers/update":
		req := &gradebrokerv1.UpdateServerRequest{Name: name, Type: optional(r, "type"), WakeupUrl: optional(r, "wakeup_url")}
		if m := optional(r, "max_jobs"); m != nil {
			n, perr := strconv.ParseUint(*m, 10, 32)
			if perr != nil {
				c.flash(w, "error", "max jobs must be a whole number")
				http.Redirect(w, r, back, http.StatusSeeOther)
				return
			}
			v := uint32(n)
			req.MaxConcurrentJobs = &v
		}
		_, err = c.admin.UpdateServer(q.ctx, req)
		msg += "changed."
	case "servers/remove":
		var resp *gradebrokerv1.RemoveServerResponse
		resp, err = c.admin.RemoveServer(q.ctx, &gradebrokerv1.RemoveServerRequest{Name: name})
		msg += "removed; " + strconv.Itoa(int(resp.GetRequeued())) + " running job(s) requeued."
	case "platforms/add":
		_, err = c.admin.AddPlatform(q.ctx, &gradebrokerv1.AddPlatformRequest{Name: name, PublicKeyPem: r.PostFormValue("public_key"),
			ReturnUrl: strings.TrimSpace(r.PostFormValue("return_url")), ForceTag: strings.TrimSpace(r.PostFormValue("force_tag")),
			RestrictPaths: splitList(r.PostFormValue("restrict_paths"))})
		msg += "added."
	case "platforms/update":
		_, err = c.admin.UpdatePlatform(q.ctx, &gradebrokerv1.UpdatePlatformRequest{Name: name, ReturnUrl: optional(r, "return_url"),
			ForceTag: optional(r, "force_tag")})
		msg += "changed."
	case "platforms/remove":
		_, err = c.admin.RemovePlatform(q.ctx, &gradebrokerv1.RemovePlatformRequest{Name: name})
		msg += "removed."
	default:
		c.errorPage(w, r, http.StatusNotFound, "There is no such registry action.")
		return
	}
	if err != nil {
		c.failed(w, r, back, err)
		return
	}
	c.done(w, r, back, strings.ToUpper(msg[:1])+msg[1:])
}
