// Package deploy holds no code of its own: its tests check the deployment
// artefacts against the program they deploy. It is a module of its own
// (github.com/modbot/modbot/deploy) so that kustomize, the Kubernetes API
// types and buildkit stay out of the main module's dependencies; `make test`
// runs it after the main module's tests.
//
// What the tests hold, each with a negative test that breaks it on a copy:
//
//   - Dockerfile (dockerfile_test.go): parses and lints clean with buildkit's
//     parser, instruction parser and linter; multi-stage, cgo with gcc, a
//     glibc distroless runtime without a shell, a non-root USER, ENTRYPOINT
//     the modbot binary; .dockerignore keeps every file the build needs.
//   - statefulsets/ (manifests_test.go): every overlay builds with kustomize
//     in-process and every document strict-decodes into the Kubernetes API
//     types; selectors match pod labels; Services, probes and NetworkPolicies
//     name real container ports; the flags and environment variables given to
//     each container are ones `modbot COMMAND -h` of a freshly built binary
//     lists; listen addresses match the declared ports; Secrets are
//     referenced, never inlined, and every key is documented in
//     docs/deploy.md; images are the one the Dockerfile builds; the
//     securityContext rules hold on every container.
//   - monitoring/ (monitoring_test.go): the PrometheusRule is the plain rule
//     file, every metric it reads is one the code exports, and promtool's
//     check rules and test rules pass, with a firing and a silent case for
//     every alert.
package deploy
