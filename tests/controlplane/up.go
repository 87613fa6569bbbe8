package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
)

// ports of one control plane, chosen at its first start and kept in
// DIR/ports.json, so that a restart on the same directory serves the same
// addresses (kubeconfigs and clients stay valid).
type ports struct {
	APIServer  int `json:"apiserver"`
	EtcdClient int `json:"etcdClient"`
	EtcdPeer   int `json:"etcdPeer"`
}

type upConfig struct {
	dir          string
	restartDelay time.Duration
	startTimeout time.Duration
	verbosity    int
	ports        ports
}

func up(args []string) int {
	fs := flag.NewFlagSet("up", flag.ContinueOnError)
	dir := fs.String("dir", "", "state directory: certificates, etcd data, logs, kubeconfig (required; reused by a restart)")
	apiPort := fs.Int("apiserver-port", 0, "port of kube-apiserver on 127.0.0.1 (0: a free one, remembered in DIR)")
	restartDelay := fs.Duration("restart-delay", time.Second, "wait before restarting a component that exited")
	startTimeout := fs.Duration("start-timeout", 60*time.Second, "give up when the control plane is not ready by then")
	verbosity := fs.Int("v", 1, "log verbosity (-v) of the components; their logs are in DIR/logs")
	withParent := fs.Bool("exit-with-parent", false, "stop when the process that started this one dies (test harnesses)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "aver-controlplane up: --dir is required and no arguments are taken")
		return 2
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "aver-controlplane up: %v\n", err)
		return 2
	}
	cfg := upConfig{dir: abs, restartDelay: *restartDelay, startTimeout: *startTimeout, verbosity: *verbosity}
	if err := cfg.prepare(*apiPort); err != nil {
		fmt.Fprintf(os.Stderr, "aver-controlplane up: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *withParent {
		ctx = untilParentDies(ctx)
	}
	if err := cfg.run(ctx); err != nil {
		fmt.Fprintf(os.Stderr, "aver-controlplane up: %v\n", err)
		return 1
	}
	return 0
}

// untilParentDies ends the context when this process is re-parented, i.e.
// when the test that started it was killed without stopping it.
func untilParentDies(parent context.Context) context.Context {
	ctx, cancel := context.WithCancel(parent)
	ppid := os.Getppid()
	go func() {
		defer cancel()
		for {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
				if os.Getppid() != ppid {
					fmt.Fprintln(os.Stderr, "aver-controlplane: parent process gone")
					return
				}
			}
		}
	}()
	return ctx
}

func (c *upConfig) pki() pki                   { return pki{dir: filepath.Join(c.dir, "pki")} }
func (c *upConfig) kubeconfig() string         { return filepath.Join(c.dir, "kubeconfig") }
func (c *upConfig) server() string             { return fmt.Sprintf("https://127.0.0.1:%d", c.ports.APIServer) }
func (c *upConfig) logFile(name string) string { return filepath.Join(c.dir, "logs", name+".log") }

// prepare creates the directory layout, ports, certificates and kubeconfig.
func (c *upConfig) prepare(apiPort int) error {
	for _, d := range []string{c.dir, filepath.Join(c.dir, "logs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return err
		}
	}
	portsFile := filepath.Join(c.dir, "ports.json")
	if data, err := os.ReadFile(portsFile); err == nil {
		if err := json.Unmarshal(data, &c.ports); err != nil {
			return fmt.Errorf("%s: %w", portsFile, err)
		}
	} else {
		var err error
		if c.ports.APIServer = apiPort; apiPort == 0 {
			if c.ports.APIServer, err = freePort(); err != nil {
				return err
			}
		}
		if c.ports.EtcdClient, err = freePort(); err != nil {
			return err
		}
		if c.ports.EtcdPeer, err = freePort(); err != nil {
			return err
		}
		data, _ := json.Marshal(c.ports)
		if err := os.WriteFile(portsFile, data, 0o600); err != nil {
			return err
		}
	}
	if apiPort != 0 && apiPort != c.ports.APIServer {
		return fmt.Errorf("--apiserver-port %d differs from the port %d this directory was set up with", apiPort, c.ports.APIServer)
	}
	if err := c.pki().ensure(); err != nil {
		return fmt.Errorf("cannot create certificates: %w", err)
	}
	return c.pki().writeKubeconfig(c.kubeconfig(), c.server())
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (c *upConfig) run(ctx context.Context) error {
	started := time.Now()
	etcd, err := c.startEtcd()
	if err != nil {
		return err
	}
	defer etcd.Close()

	self, err := os.Executable()
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	// Children get SIGTERM when ctx ends (supervise), and SIGKILL if this
	// process dies without stopping them (Pdeathsig).
	childCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	for _, comp := range c.components() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.supervise(childCtx, self, comp)
		}()
		if comp.name == "kube-apiserver" {
			if err := c.waitReady(ctx, "/readyz", started); err != nil {
				return err
			}
		}
	}
	// The controller manager works once it has made the default
	// ServiceAccount, without which no Pod is admitted.
	if err := c.waitReady(ctx, "/api/v1/namespaces/default/serviceaccounts/default", started); err != nil {
		return err
	}
	fmt.Printf("ready kubeconfig=%s server=%s seconds=%.1f\n", c.kubeconfig(), c.server(), time.Since(started).Seconds())
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "aver-controlplane: stopping")
	cancel()
	return nil
}

func (c *upConfig) startEtcd() (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "aver-e2e"
	cfg.Dir = filepath.Join(c.dir, "etcd")
	client := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(c.ports.EtcdClient))}
	peer := url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(c.ports.EtcdPeer))}
	cfg.ListenClientUrls = []url.URL{client}
	cfg.AdvertiseClientUrls = []url.URL{client}
	cfg.ListenPeerUrls = []url.URL{peer}
	cfg.AdvertisePeerUrls = []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{c.logFile("etcd")}
	// A throwaway test store: durability against power loss buys nothing.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("cannot start etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("etcd failed: %w", err)
	case <-time.After(c.startTimeout):
		e.Close()
		return nil, errors.New("etcd did not become ready")
	}
}

type component struct {
	name string
	args []string
}

func (c *upConfig) components() []component {
	p := c.pki()
	v := "--v=" + strconv.Itoa(c.verbosity)
	kubeconfig := "--kubeconfig=" + c.kubeconfig()
	return []component{
		{"kube-apiserver", []string{
			v,
			"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", c.ports.EtcdClient),
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port=" + strconv.Itoa(c.ports.APIServer),
			"--cert-dir=" + filepath.Join(c.dir, "apiserver"),
			"--tls-cert-file=" + p.path("apiserver.crt"),
			"--tls-private-key-file=" + p.path("apiserver.key"),
			"--client-ca-file=" + p.path("ca.crt"),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + p.path("sa.pub"),
			"--service-account-signing-key-file=" + p.path("sa.key"),
			"--service-cluster-ip-range=10.96.0.0/16",
			// Nodes are told apart by port, not name: reach kubelets (logs,
			// exec) at their InternalIP.
			"--kubelet-preferred-address-types=InternalIP",
			"--authorization-mode=RBAC",
			// As kind does, so that manifests behave as on a kind cluster.
			"--allow-privileged=true",
			// The "kubernetes" Service's Endpoints would name 127.0.0.1,
			// which the API refuses (loopback); nothing here uses it.
			"--endpoint-reconciler-type=none",
			"--profiling=false",
		}},
		{"kube-controller-manager", []string{
			v,
			kubeconfig,
			"--authentication-kubeconfig=" + c.kubeconfig(),
			"--authorization-kubeconfig=" + c.kubeconfig(),
			"--secure-port=0",
			"--leader-elect=false",
			"--use-service-account-credentials=false",
			"--root-ca-file=" + p.path("ca.crt"),
			// What turns Deployments into Pods, lets Pods be admitted
			// (default ServiceAccounts), cleans up after owners, keeps
			// PodDisruptionBudgets' status (which the eviction API checks),
			// and takes the not-ready taint off a node once its kubelet
			// reports Ready (and taints and evicts when it stops), and binds
			// PersistentVolumeClaims to PersistentVolumes. Not EndpointSlices:
			// simulated pods have loopback addresses, which the API refuses
			// in them.
			"--controllers=deployment-controller,replicaset-controller,serviceaccount-controller," +
				"garbage-collector-controller,namespace-controller,disruption-controller," +
				"node-lifecycle-controller,taint-eviction-controller,persistentvolume-binder-controller",
			"--profiling=false",
		}},
		{"kube-scheduler", []string{
			v,
			kubeconfig,
			"--authentication-kubeconfig=" + c.kubeconfig(),
			"--authorization-kubeconfig=" + c.kubeconfig(),
			"--secure-port=0",
			"--leader-elect=false",
			"--profiling=false",
		}},
	}
}

// supervise runs one component until ctx ends, restarting it after
// restartDelay whenever it exits. Its PID is in DIR/NAME.pid while it runs.
func (c *upConfig) supervise(ctx context.Context, self string, comp component) {
	pidFile := filepath.Join(c.dir, comp.name+".pid")
	for ctx.Err() == nil {
		err := c.runChild(ctx, self, comp, pidFile)
		if ctx.Err() != nil {
			return
		}
		fmt.Fprintf(os.Stderr, "aver-controlplane: %s exited (%v); restarting in %s\n", comp.name, err, c.restartDelay)
		select {
		case <-ctx.Done():
			return
		case <-time.After(c.restartDelay):
		}
	}
}

func (c *upConfig) runChild(ctx context.Context, self string, comp component, pidFile string) error {
	log, err := os.OpenFile(c.logFile(comp.name), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer log.Close()
	cmd := exec.Command(self, append([]string{comp.name}, comp.args...)...)
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	_ = os.WriteFile(pidFile, []byte(strconv.Itoa(cmd.Process.Pid)), 0o600)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		_ = os.Remove(pidFile)
		return err
	case <-ctx.Done():
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-done:
			_ = os.Remove(pidFile)
			return err
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			_ = os.Remove(pidFile)
			return <-done
		}
	}
}

// waitReady polls an API path as the admin until it answers 200.
func (c *upConfig) waitReady(ctx context.Context, path string, started time.Time) error {
	client, err := c.adminClient()
	if err != nil {
		return err
	}
	deadline := started.Add(c.startTimeout)
	var last string
	for {
		resp, err := client.Get(c.server() + path)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (last: %s); logs in %s", path, c.startTimeout, last, filepath.Join(c.dir, "logs"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *upConfig) adminClient() (*http.Client, error) {
	p := c.pki()
	ca, err := os.ReadFile(p.path("ca.crt"))
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(ca) {
		return nil, errors.New("cannot read the fixture CA")
	}
	cert, err := tls.LoadX509KeyPair(p.path("admin.crt"), p.path("admin.key"))
	if err != nil {
		return nil, err
	}
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs:      pool,
			Certificates: []tls.Certificate{cert},
			MinVersion:   tls.VersionTLS12,
		}},
	}, nil
}
