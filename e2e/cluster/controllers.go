package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// controllersReadyTimeout bounds the wait for kube-controller-manager to create the default ServiceAccount
// of a new namespace: the sign that its controllers run.
var controllersReadyTimeout = 90 * time.Second

// Controllers are the binaries of StartControllers.
type Controllers struct {
	Scheduler         string // kube-scheduler
	ControllerManager string // kube-controller-manager
}

// StartControllers starts kube-scheduler and kube-controller-manager against this control plane (its
// kubeconfig, its service-account key and CA), with leader election and serving ports off, logs in Dir.
// With them Pods are scheduled, DaemonSets get their pods, and the node lifecycle controller lifts a new
// node's not-ready taint. clusterCIDR is the pod network the controller-manager is told about (it assigns
// no ranges: --allocate-node-cidrs stays off). Close stops them first.
func (c *Cluster) StartControllers(ctx context.Context, bins Controllers, clusterCIDR string) (retErr error) {
	if c.apiserver == nil {
		return errors.New("start controllers: the control plane was not started by this process")
	}
	defer func() {
		if retErr != nil {
			retErr = errors.Join(retErr, c.stopControllers())
		}
	}()
	flexDir := filepath.Join(c.Dir, "flexvolume") // else it creates /usr/libexec/kubernetes on the host
	if err := os.MkdirAll(flexDir, 0o755); err != nil {
		return fmt.Errorf("start controllers: %w", err)
	}
	var err error
	c.scheduler, err = StartProcess("kube-scheduler", bins.Scheduler, []string{
		"--kubeconfig=" + c.Kubeconfig, "--leader-elect=false", "--secure-port=0", "--v=1",
	}, filepath.Join(c.Dir, "kube-scheduler.log"))
	if err != nil {
		return err
	}
	c.controllerManager, err = StartProcess("kube-controller-manager", bins.ControllerManager, []string{
		"--kubeconfig=" + c.Kubeconfig, "--leader-elect=false", "--secure-port=0",
		"--service-account-private-key-file=" + c.saKey, "--root-ca-file=" + c.CACert,
		"--use-service-account-credentials=false",
		"--cluster-cidr=" + clusterCIDR, "--service-cluster-ip-range=" + ServiceCIDR,
		"--flex-volume-plugin-dir=" + flexDir, "--v=1",
	}, filepath.Join(c.Dir, "kube-controller-manager.log"))
	if err != nil {
		return err
	}
	// The ServiceAccount controller creates kube-system/default once it runs; the DaemonSet pods need it.
	ctx, cancel := context.WithTimeout(ctx, controllersReadyTimeout)
	defer cancel()
	for {
		_, err := c.Client.CoreV1().ServiceAccounts("kube-system").Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		for _, p := range []*Process{c.scheduler, c.controllerManager} {
			if p.Exited() {
				return fmt.Errorf("%s %w; last log lines of %s:\n%s", p.Name, errExited, p.LogPath, p.LogTail(30))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-controller-manager: no kube-system/default ServiceAccount after %s (%v); last log lines:\n%s",
				controllersReadyTimeout, err, c.controllerManager.LogTail(30))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (c *Cluster) stopControllers() error {
	var errs []error
	for _, p := range []*Process{c.scheduler, c.controllerManager} {
		if p != nil {
			errs = append(errs, p.Stop())
		}
	}
	c.scheduler, c.controllerManager = nil, nil
	return errors.Join(errs...)
}
