//! FHIR knowledge: the official definitions, validation, and the small value types
//! (resource type names, ids) that the rest of the server trusts once parsed.

pub mod definitions;
pub mod order;
pub mod types;
pub mod validate;
