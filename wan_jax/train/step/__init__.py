"""The step's mathematics: objective, timesteps, optimizer, the expert schedule, mesh and
sharding rules, the memory planner's candidates and the compiled train step. May import
wan_jax/model, wan_jax/tasks and wan_jax/data's geometry; never wan_jax/train/run or /outputs."""
