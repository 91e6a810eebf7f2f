//! The Yosegi party client: what runs at a plant. It holds the site's key and data, trains the
//! declared network locally with burn, and (as the federation-round work lands) talks to the
//! coordinator. Raw data never leaves the site.

#![forbid(unsafe_code)]

pub mod cli;
pub mod local;
