pub mod drift;
