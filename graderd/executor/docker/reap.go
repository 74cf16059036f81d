package docker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/client"

	"github.com/gradebroker/gradebroker/graderd/executor"
)

// CheckHardening refuses an engine that cannot apply the hardened profile:
// one without seccomp (its default profile is part of it).
func (e *Engine) CheckHardening(ctx context.Context) error {
	info, err := e.cli.Info(ctx, client.InfoOptions{})
	if err != nil {
		return fmt.Errorf("asking the Docker engine at %s what it supports: %w", e.host, err)
	}
	for _, o := range info.Info.SecurityOptions {
		if strings.Contains(o, "name=seccomp") && !strings.Contains(o, "profile=unconfined") {
			return nil
		}
	}
	return fmt.Errorf("the Docker engine at %s does not apply its default seccomp profile (security options %q), part of every container's hardening; run an engine built with seccomp", e.host, info.Info.SecurityOptions)
}

// ReapOrphans removes every container labelled with server's name
// (executor.LabelServer), running or not, and the images loaded for its
// runs: what a graderd of this server that died left behind. It runs
// before the server takes jobs, so none of them belongs to a live run.
func (e *Engine) ReapOrphans(ctx context.Context, server string, log *slog.Logger) (int, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	list, err := e.cli.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", executor.LabelServer+"="+server),
	})
	if err != nil {
		return 0, fmt.Errorf("listing the containers a previous graderd left: %w", err)
	}
	n := 0
	var errs []error
	for _, c := range list.Items {
		_, err := e.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
		if err != nil && !errdefs.IsNotFound(err) {
			errs = append(errs, fmt.Errorf("removing container %.12s: %w", c.ID, err))
			continue
		}
		n++
		log.Warn("removed a container left by a previous graderd", "container", c.ID[:min(12, len(c.ID))],
			"job_id", c.Labels[executor.LabelJob], "lease_id", c.Labels[executor.LabelLease], "role", c.Labels[LabelRole], "state", c.State)
	}
	images, err := e.cli.ImageList(ctx, client.ImageListOptions{
		Filters: make(client.Filters).Add("reference", loadedRepo+"/"+repoComponent(server)+"-lease-*"),
	})
	if err != nil {
		return n, errors.Join(append(errs, fmt.Errorf("listing the images a previous graderd loaded: %w", err))...)
	}
	prefix := loadedRepo + "/" + repoComponent(server) + "-lease-"
	for _, im := range images.Items {
		// By name, never by id: the image may have other names (the
		// job's archive held an image the engine had), which stay.
		for _, tag := range im.RepoTags {
			if !strings.HasPrefix(tag, prefix) {
				continue
			}
			if _, err := e.cli.ImageRemove(ctx, tag, client.ImageRemoveOptions{PruneChildren: true}); err != nil && !errdefs.IsNotFound(err) {
				errs = append(errs, fmt.Errorf("removing image %s: %w", tag, err))
				continue
			}
			n++
			log.Warn("removed an image a previous graderd loaded for a run", "image", tag)
		}
	}
	return n, errors.Join(errs...)
}
