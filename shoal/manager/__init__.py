"""The manager: store, orchestrators, scheduler, allocator, dispatcher, CA."""
