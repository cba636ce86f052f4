"""ASI Serval frame streaming (`jsonimage` over TCP): the adapter and a simulator speaking it."""
