//! Chaos on real processes: the production binaries under kill -9, pauses and cut
//! links (see the chaos issue).
