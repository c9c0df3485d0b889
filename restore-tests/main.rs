//! End-to-end scenarios of drctl against real services: PostgreSQL, etcd and
//! an S3 server with enforced Object Lock. `./scripts/test` starts them and
//! exports their endpoints; without those, the harness starts its own.

mod harness;

mod agent;
mod apiserver;
mod bucket_writer;
mod catalog;
mod cli;
mod dashboard;
mod deploy;
mod doctor;
mod drill;
mod etcd;
mod fault_proxy;
mod incident;
mod legacy;
mod listing;
mod rebuild;
mod resources;
mod restore_safety;
mod runbook;
mod s3;
mod server;
mod services;
mod tree;
mod volume;
