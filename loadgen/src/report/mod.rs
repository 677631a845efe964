//! What a run reports: the [`summary::RunSummary`] (printed as a table by
//! [`table`], written as JSON), the `.hgrm` percentile file ([`hgrm`]), the SVG
//! plot ([`svg`]) and the comparison of two JSON summaries ([`compare`]).

pub mod compare;
pub mod hgrm;
pub mod merge;
pub mod summary;
pub mod svg;
pub mod table;
