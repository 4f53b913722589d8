//! inspector-keyd: a gRPC sidecar that reads, verifies and manages the customer managed
//! KMS key Amazon Inspector uses to encrypt code-scanning data at rest.
//!
//! [`app`] builds and runs everything. Layers, outermost first: [`server`], [`tls`], [`aws_api`]
//! (the AWS-protocol door) and [`connection`] (listeners, connection limits) →
//! [`ops`] (request ids, metrics, shedding) → [`authz`] (a tower layer) → [`service`]
//! (validation, mapping to gRPC) → [`cache`] (the key in use) → [`backend`] (local or AWS);
//! verification reads keys from the backend as they are now, never from the cache.
//! [`verify`] is a pure library the service and the CLI call. [`status`] is the one place
//! errors become `tonic::Status`. [`rpc`] is the leaf every layer shares: the method table
//! generated from the access options in proto/, roles, request ids and spans. [`probes`]
//! serves metrics, liveness and readiness on their own listener.

pub mod app;
pub mod audit;
pub mod authz;
pub mod aws_api;
pub mod backend;
pub mod cache;
pub mod cli;
pub mod config;
pub mod connection;
pub mod domain;
pub mod drain;
pub mod files;
pub mod fleet;
pub mod jitter;
pub mod metrics;
pub mod ops;
pub mod probes;
pub mod proto;
pub mod refusals;
pub mod reload;
pub mod rpc;
pub mod scopes;
pub mod server;
pub mod service;
pub mod status;
pub mod striped;
pub mod tls;
pub mod verify;
