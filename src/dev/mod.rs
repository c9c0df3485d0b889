//! Tools for development, tests and the demo, not for production: a
//! stand-in Kubernetes API server ([`apiserver`]).

pub mod apiserver;
