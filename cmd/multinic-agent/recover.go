package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/multinic/multinic/ipam/eni"
	"github.com/multinic/multinic/ipam/store"
)

// recoverCheckpoint is --recover: with a checkpoint that loads, nothing to do; with none, or a corrupt one
// (moved aside to <file>.corrupt-<time>), the checkpoint is rebuilt from EC2, the pod netns in
// --netns-dirs and, with --kubeconfig, the pods on this node (eni.Recover) and saved before the agent
// starts on it. A checkpoint of a newer version is left alone: the agent refuses to start, as without
// --recover.
func recoverCheckpoint(ctx context.Context, o options, st *store.FileStore, log *slog.Logger) error {
	_, found, err := st.Load()
	switch {
	case err == nil && found:
		log.Info("recover: the checkpoint loads; nothing to recover", "path", st.Path())
		return nil
	case err != nil && !errors.Is(err, store.ErrCorrupt):
		return fmt.Errorf("recover: %w", err)
	case err != nil:
		aside := fmt.Sprintf("%s.corrupt-%s", st.Path(), time.Now().UTC().Format("20060102T150405Z"))
		if rerr := os.Rename(st.Path(), aside); rerr != nil {
			return fmt.Errorf("recover: move the corrupt checkpoint aside: %w", rerr)
		}
		log.Warn("recover: corrupt checkpoint moved aside", "err", err, "to", aside)
	}
	ec2c, imdsc, err := awsClients(ctx, o)
	if err != nil {
		return err
	}
	var pods []eni.PodIPs
	if o.kubeconfig != "" {
		if pods, err = nodePods(ctx, o); err != nil {
			return fmt.Errorf("recover: %w", err)
		}
	}
	links, err := eni.NewNetlinkLinks(o.linkNetns)
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	defer links.Close()
	cp, rep, err := eni.Recover(ctx, o.eniConfig(log), eni.Deps{EC2: ec2c, IMDS: imdsc, Links: links}, o.netnsDirs, pods)
	if err != nil {
		return err
	}
	if err := st.Save(cp); err != nil {
		return fmt.Errorf("recover: save the rebuilt checkpoint: %w", err)
	}
	log.Warn("recover: checkpoint rebuilt from EC2 and the pod netns", "netns", rep.Netns, "exclusive", rep.Exclusive,
		"shared", rep.Shared, "podsKnown", len(pods), "matchedPods", rep.MatchedPods, "netnsDirs", o.netnsDirs)
	return nil
}

// nodePods lists the running pods on this node that have their own netns, with their IPs.
func nodePods(ctx context.Context, o options) ([]eni.PodIPs, error) {
	rc, err := restConfig(o.kubeconfig)
	if err != nil {
		return nil, err
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client from %s: %w", o.kubeconfig, err)
	}
	list, err := kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "spec.nodeName=" + o.nodeName})
	if err != nil {
		return nil, fmt.Errorf("list pods on node %s: %w", o.nodeName, err)
	}
	var out []eni.PodIPs
	for _, p := range list.Items {
		if p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning {
			continue
		}
		pi := eni.PodIPs{Namespace: p.Namespace, Name: p.Name, UID: string(p.UID)}
		for _, ip := range p.Status.PodIPs {
			if a, err := netip.ParseAddr(ip.IP); err == nil {
				pi.IPs = append(pi.IPs, a)
			}
		}
		if len(pi.IPs) > 0 {
			out = append(out, pi)
		}
	}
	return out, nil
}
