package kubetest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DeployDir finds deploy/kubernetes above the working directory.
func DeployDir() (string, error) {
	script, err := findScript()
	if err != nil {
		return "", err
	}
	return filepath.Join(filepath.Dir(filepath.Dir(script)), "deploy", "kubernetes"), nil
}

// Apply creates every object of the YAML files (several documents each)
// through the API server, which validates them as it would a kubectl
// apply. It returns the objects created.
func (e *Env) Apply(ctx context.Context, files ...string) ([]runtime.Object, error) {
	c, err := client.New(e.Config, client.Options{Scheme: scheme.Scheme})
	if err != nil {
		return nil, err
	}
	var out []runtime.Object
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
		for i := 0; ; i++ {
			var raw runtime.RawExtension
			if err := dec.Decode(&raw); err != nil {
				if errors.Is(err, io.EOF) {
					break
				}
				return nil, fmt.Errorf("%s: document %d: %w", f, i, err)
			}
			if len(bytes.TrimSpace(raw.Raw)) == 0 {
				continue
			}
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(raw.Raw, nil, nil)
			if err != nil {
				return nil, fmt.Errorf("%s: document %d: %w", f, i, err)
			}
			co, ok := obj.(client.Object)
			if !ok {
				return nil, fmt.Errorf("%s: document %d is a %T", f, i, obj)
			}
			if err := c.Create(ctx, co); err != nil {
				return nil, fmt.Errorf("%s: creating %s %s: %w", f, co.GetObjectKind().GroupVersionKind().Kind, co.GetName(), err)
			}
			out = append(out, obj)
		}
	}
	return out, nil
}

// WriteKubeconfig writes cfg (a user's, from UserConfig) as a kubeconfig
// file whose current context is "test", for a graderd process.
func WriteKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	return clientcmd.WriteToFile(*kc, path)
}
