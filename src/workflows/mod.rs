//! The clinical workflows: rules that hold on every write of the resources they govern
//! (`interactions::rules` calls them inside the write's transaction) and the operations that
//! drive them. Each writes through the interactions as the requesting principal, so reach,
//! masking and audit apply as to any request.
//!
//! - [`scheduling`]: no double booking (PostgreSQL's guarantee), Slots that follow their
//!   Appointments, Argonaut `$find`/`$hold`/`$book`, expiring holds.
//! - [`pharmacy`]: dispenses within a prescription's repeats, refill requests, Task states.
//! - [`billing`]: invoices from fulfilled appointments, the monthly report.
//! - [`messaging`]: patients write to their care team as themselves.
//! - [`safety`]: the interaction and allergy check of prescriptions (DetectedIssue, CDS Hooks).

pub mod billing;
pub mod messaging;
pub mod pharmacy;
pub mod safety;
pub mod scheduling;
