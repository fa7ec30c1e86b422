//! The batch oracle: `SEMANTICS.md` computed from scratch over a finite input (being written).
