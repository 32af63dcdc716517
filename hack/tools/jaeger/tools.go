//go:build tools

// Wrapper module: builds Jaeger (v2, all-in-one with in-memory storage), the trace
// store the tests export spans to over OTLP and query through its HTTP API.
package tools

import _ "github.com/jaegertracing/jaeger/cmd/jaeger"
