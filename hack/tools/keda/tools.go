//go:build tools

// Wrapper module: builds KEDA's operator and its metrics server (the external.metrics.k8s.io API the
// HorizontalPodAutoscaler reads), the autoscaler the platform's ScaledObjects are tested with.
package tools

import (
	_ "github.com/kedacore/keda/v2/cmd/adapter"
	_ "github.com/kedacore/keda/v2/cmd/operator"
)
