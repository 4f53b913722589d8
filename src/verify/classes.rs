//! The classes a request value falls into, as the policies' own values split it.
