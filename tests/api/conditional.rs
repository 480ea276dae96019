//! conditional tests.
