//! The kernel's in-place aggregates, read through [`KernelMaps`] by whoever is handed the probes.
use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use super::Probes;
use crate::shared::event::{CulpritTotal, KernelCounters, KernelMaps, ProbeStatus, RunqHistogram};

/// The probes are shared with the watch-set task, which changes a map; readers only read.
impl KernelMaps for Mutex<Probes> {
    fn counters(&self) -> anyhow::Result<KernelCounters> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters()
    }

    fn runq_histograms(&self) -> anyhow::Result<HashMap<u32, RunqHistogram>> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .runq_histograms()
    }

    fn runq_culprits(&self) -> anyhow::Result<Vec<CulpritTotal>> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .runq_culprits()
    }

    fn watched(&self) -> Vec<u32> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .watched()
    }

    fn probe_status(&self) -> Vec<ProbeStatus> {
        self.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .status()
            .to_vec()
    }
}
