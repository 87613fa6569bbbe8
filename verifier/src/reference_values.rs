//! Reference values written from a known-good node: the boot policy a
//! firmware event log yields and the runtime allow-list a node image yields.
