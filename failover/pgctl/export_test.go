package pgctl

// PromotePollSQL is promotePollSQL, for the integration tests.
const PromotePollSQL = promotePollSQL
