//! Test harness: a fresh database per test, the real daemon binary on 127.0.0.1 port 0, real
//! DCMTK tools and pynetdicom as peers, and a private PostgreSQL cluster for outage tests.
//!
//! One module per concern, everything re-exported here. Each test binary includes `mod common;`
//! and uses a part of it: unused items (in every module below) and re-exports are expected.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod config;
mod daemon;
mod db;
mod dcmtk;
pub mod dul;
mod fixtures;
mod http;
mod models;
pub mod netns;
mod notify;
mod pg_cluster;
mod ports;
mod pynetdicom;

#[allow(unused_imports)]
pub use {
    config::{AE, analysis_sections, analysis_sections_with, write_config, write_config_with},
    daemon::Daemon,
    db::{TestDb, admin_url, wait_for},
    dcmtk::StoreScp,
    fixtures::{chest_copy, dataset_bytes, fixture, python, root, run, staged_files, text},
    http::{http_get, parse_metrics},
    models::{ort_library, tiny_models_section, venv_ort_library},
    notify::messages_until,
    pg_cluster::PrivatePg,
    ports::{PortReservation, listens, reserve_port},
    pynetdicom::{Ack, pynetdicom_send},
};
