//! Shared set-up of the operator's integration tests against real API servers.

#![allow(dead_code)]

pub mod k8s;
