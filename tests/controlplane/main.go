// Command aver-controlplane is a test fixture of aver, not part of the
// product: a real Kubernetes control plane on loopback, built from the
// upstream Kubernetes Go modules at the version pinned in go.mod.
//
// It is a multi-call binary, so that one build (one link of a large binary)
// yields every component:
//
//	aver-controlplane up --dir DIR        etcd (embedded) + kube-apiserver +
//	                                      kube-controller-manager + kube-scheduler,
//	                                      certificates and a kubeconfig in DIR
//	aver-controlplane kube-apiserver ...  the upstream commands, unchanged
//	aver-controlplane kube-controller-manager ...
//	aver-controlplane kube-scheduler ...
//	aver-controlplane kubelet ...         the upstream kubelet: the real nodes of
//	                                      the end-to-end tests, one process per
//	                                      node, each with its own containerd
//	aver-controlplane kubectl ...         (also when invoked through a symlink
//	                                      named kubectl)
//
// `up` runs each component as a child process of its own (re-executing this
// binary), as a node's kubelet runs static pods: a component that dies is
// restarted after --restart-delay, which is how tests kill and restart the
// API server while etcd keeps its data.
package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	_ "time/tzdata" // CronJob time zones, as upstream's binaries

	_ "k8s.io/client-go/plugin/pkg/client/auth"
	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	_ "k8s.io/component-base/logs/json/register"
	_ "k8s.io/component-base/metrics/prometheus/clientgo"
	_ "k8s.io/component-base/metrics/prometheus/version"
	"k8s.io/component-base/version"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

const usage = `usage: aver-controlplane COMMAND [ARGS...]

Test fixture of aver: a real Kubernetes control plane on loopback.

commands:
  up --dir DIR [flags]        etcd + kube-apiserver + kube-controller-manager +
                              kube-scheduler on 127.0.0.1; writes DIR/kubeconfig
                              ("up --help" for flags)
  kube-apiserver ARGS         upstream kube-apiserver
  kube-controller-manager ARGS
  kube-scheduler ARGS
  kubelet ARGS                upstream kubelet (a node; needs root and a CRI runtime)
  kubectl ARGS                upstream kubectl (also as a symlink named kubectl)
  version                     the Kubernetes version built in
`

func main() {
	name := filepath.Base(os.Args[0])
	args := os.Args[1:]
	if name != "kubectl" {
		if len(args) == 0 {
			fmt.Fprint(os.Stderr, usage)
			os.Exit(2)
		}
		name, args = args[0], args[1:]
	}
	// Every upstream command reads os.Args (kubectl for plugins, cobra for
	// flags): present it exactly as its own binary would see it.
	os.Args = append([]string{name}, args...)

	switch name {
	case "up":
		os.Exit(up(args))
	case "kube-apiserver":
		os.Exit(cli.Run(apiserver.NewAPIServerCommand()))
	case "kube-controller-manager":
		os.Exit(cli.Run(controllermanager.NewControllerManagerCommand()))
	case "kube-scheduler":
		os.Exit(cli.Run(scheduler.NewSchedulerCommand()))
	case "kubelet":
		os.Exit(cli.Run(kubelet.NewKubeletCommand(context.Background())))
	case "kubectl":
		logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) //nolint:errcheck
		if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
			util.CheckErr(err)
		}
	case "version":
		fmt.Println(kubernetesVersion())
	case "help", "-h", "--help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "aver-controlplane: unknown command %q\n\n%s", name, usage)
		os.Exit(2)
	}
}

// kubernetesVersion is the version of the upstream modules, stamped at link
// time by the build (scripts/e2e.sh); a plain go build reports v0.0.0.
func kubernetesVersion() string {
	return version.Get().GitVersion
}
