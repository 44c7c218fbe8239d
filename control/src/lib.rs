//! Keelson's control plane as a library: the Kubernetes API server over the replicated store
//! (`apiserver`), the scheduler, the controller manager (`controllers`), Lease-based leader election, the event recorder, and what every
//! process shares (`process`, `decode`). The `keelson` binary (`src/bin/keelson/`, a file per
//! subcommand) runs them.

pub mod apiserver;
pub mod controllers;
pub mod cron;
pub mod decode;
pub mod dns;
pub mod election;
pub mod events;
pub mod labels;
pub mod nodenet;
pub mod pki;
pub mod process;
pub mod scheduler;
