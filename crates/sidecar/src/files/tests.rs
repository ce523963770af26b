//! Tests of the hostile-file reader.
