//! (Not yet implemented.)
fn main() {}
