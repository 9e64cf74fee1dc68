// Package runbooks loads, plans and runs failover drills: YAML files kept
// in version control that a cron job or a CI pipeline runs, whose plan can
// be reviewed before they run, and whose result is a report with the
// numbers that matter (how long writes were down, whether any was lost).
//
// A runbook names the cluster it is for, optional defaults and probe
// settings, ordered steps and on_failure steps:
//
//	name: switchover-and-back
//	cluster: demo
//	defaults: {timeout: 60s, max_lag: 16MB, catchup_timeout: 30s, fail_on: critical}
//	probe: {database: postgres, table: replctl_drill_probe, interval: 20ms, write_timeout: 1s}
//	steps:
//	  - check: [single_primary, streaming, lag]
//	  - probe: start
//	  - promote: planned
//	    candidate: auto
//	  - wait: replicas_streaming
//	  - promote: planned
//	    candidate: initial_primary
//	  - probe: stop
//	  - assert: ["write_outage < 5s", "lost_writes == 0"]
//	on_failure:
//	  - promote: planned
//	    candidate: initial_primary
//
// Every step is a mapping with exactly one kind key (check, promote,
// rejoin, node, wait, probe, assert, sleep), the kind's own keys, and
// optionally id (for <id>.duration and the reports) and name (the line shown
// instead of the generated description). Parse reports every problem with
// its file, line and what to do, before anything runs; node names are
// checked against the configuration.
//
// Engines never print: Engine.Plan returns a PlanReport and Engine.Run
// emits Events to a sink while it builds a Report, which WriteJUnit turns
// into JUnit XML for CI systems.
//
// A run holds the cluster lock from its first step to its last (every
// promotion runs under it, through failover.OperationSpec.Held) and records
// its steps, and those of the plans it executes, in one history record of
// kind "drill".
package runbooks
