// The sandbox ("pause") program of the real test node's pods.
module veza.dev/hack/tools/pause

go 1.26.0
