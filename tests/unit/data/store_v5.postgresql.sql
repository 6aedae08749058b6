-- A store at schema version 5 (before resources.io), as Fleet 2fcdadf made it: `pg_dump --no-owner
-- --no-privileges --no-comments` of a new store with one tenant (acme, pids 64) and one plan (price_basic,
-- memory 128Mi); comment lines and the \restrict guard (older psql lacks it) dropped.

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

CREATE FUNCTION public.fleet_events_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
      RAISE EXCEPTION 'events are append-only' USING ERRCODE = 'integrity_constraint_violation';
    END $$;

CREATE FUNCTION public.fleet_json_type(value text) RETURNS text
    LANGUAGE plpgsql IMMUTABLE
    AS $$
BEGIN
  RETURN jsonb_typeof(value::jsonb);
EXCEPTION WHEN others THEN
  RETURN NULL;
END $$;

CREATE FUNCTION public.fleet_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
      PERFORM pg_notify('fleet_changes', TG_TABLE_NAME);
      RETURN NULL;
    END $$;

CREATE FUNCTION public.fleet_revision_lock() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
      PERFORM pg_advisory_xact_lock(439905248628);
      RETURN NULL;
    END $$;

CREATE FUNCTION public.fleet_status_stamp() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
      NEW.revision := nextval('fleet_revision_seq');
      RETURN NEW;
    END $$;

CREATE FUNCTION public.fleet_tenants_before_write() RETURNS trigger
    LANGUAGE plpgsql
    AS $_$
    BEGIN
      IF (TG_OP = 'INSERT' OR NEW.template IS DISTINCT FROM OLD.template)
         AND NOT EXISTS (SELECT 1 FROM templates WHERE name = NEW.template) THEN
        RAISE EXCEPTION 'template: unknown template; see fleet template list' USING ERRCODE = 'check_violation';
      END IF;
      IF (TG_OP = 'INSERT' OR NEW.ingress_ports IS DISTINCT FROM OLD.ingress_ports)
         AND NEW.ingress_ports IS NOT NULL AND fleet_json_type(NEW.ingress_ports) = 'array' AND EXISTS (
          SELECT 1 FROM jsonb_array_elements(NEW.ingress_ports::jsonb) AS port
           WHERE jsonb_typeof(port) <> 'number' OR port::text !~ '^[0-9]+$'
              OR port::text::numeric < 1 OR port::text::numeric > 65535) THEN
        RAISE EXCEPTION 'ingress_ports: ports must be whole numbers from 1 to 65535'
          USING ERRCODE = 'check_violation';
      END IF;
      IF TG_OP = 'INSERT' THEN
        NEW.generation := 1;
      ELSE
        IF OLD.deletion_requested_at IS NOT NULL AND NEW.deletion_requested_at IS NULL THEN
          RAISE EXCEPTION 'deletion_requested_at: a requested delete cannot be taken back'
            USING ERRCODE = 'check_violation';
        END IF;
        IF OLD.deletion_requested_at IS NOT NULL AND (OLD.template IS DISTINCT FROM NEW.template OR OLD.cpu_millicores IS DISTINCT FROM NEW.cpu_millicores OR OLD.memory_bytes IS DISTINCT FROM NEW.memory_bytes OR OLD.disk_bytes IS DISTINCT FROM NEW.disk_bytes OR OLD.pids IS DISTINCT FROM NEW.pids OR OLD.ingress_ports IS DISTINCT FROM NEW.ingress_ports OR OLD.paused IS DISTINCT FROM NEW.paused) THEN
          RAISE EXCEPTION 'name: the tenant is being deleted; wait for the delete, then create it again'
            USING ERRCODE = 'check_violation';
        END IF;
        NEW.generation := OLD.generation + (CASE WHEN OLD.template IS DISTINCT FROM NEW.template OR OLD.cpu_millicores IS DISTINCT FROM NEW.cpu_millicores OR OLD.memory_bytes IS DISTINCT FROM NEW.memory_bytes OR OLD.disk_bytes IS DISTINCT FROM NEW.disk_bytes OR OLD.pids IS DISTINCT FROM NEW.pids OR OLD.ingress_ports IS DISTINCT FROM NEW.ingress_ports OR OLD.paused IS DISTINCT FROM NEW.paused THEN 1 ELSE 0 END);
        NEW.updated_at := CURRENT_TIMESTAMP;
      END IF;
      NEW.revision := nextval('fleet_revision_seq');
      RETURN NEW;
    END $_$;

CREATE FUNCTION public.fleet_tenants_soft_delete() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
      IF OLD.finalized THEN
        RETURN OLD;
      END IF;
      UPDATE tenants SET deletion_requested_at = COALESCE(OLD.deletion_requested_at, CURRENT_TIMESTAMP)
       WHERE id = OLD.id;
      RETURN NULL;
    END $$;

CREATE FUNCTION public.fleet_tombstone_stamp() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
    BEGIN
      NEW.revision := nextval('fleet_revision_seq');
      RETURN NEW;
    END $$;

SET default_tablespace = '';

SET default_table_access_method = heap;

CREATE TABLE public.api_tokens (
    name text NOT NULL,
    role text NOT NULL,
    token_hash text NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    revoked_at timestamp with time zone,
    CONSTRAINT role_must_be_billing_operator_or_viewer CHECK ((role = ANY (ARRAY['billing'::text, 'operator'::text, 'viewer'::text]))),
    CONSTRAINT token_name_must_be_1_to_63_characters CHECK (((length(name) >= 1) AND (length(name) <= 63)))
);

CREATE TABLE public.billing_subscriptions (
    subscription_id text NOT NULL,
    tenant text NOT NULL,
    customer text,
    plan text,
    last_event_created bigint DEFAULT '0'::bigint NOT NULL,
    deleted_at timestamp with time zone
);

CREATE TABLE public.events (
    id integer NOT NULL,
    tenant text NOT NULL,
    node text,
    type text DEFAULT 'Normal'::text NOT NULL,
    reason text NOT NULL,
    action text,
    message text DEFAULT ''::text NOT NULL,
    duration_ms double precision,
    generation bigint,
    details text DEFAULT '{}'::text NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL
);

CREATE SEQUENCE public.events_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.events_id_seq OWNED BY public.events.id;

CREATE TABLE public.fleet_revision (
    id integer NOT NULL,
    value bigint NOT NULL
);

CREATE SEQUENCE public.fleet_revision_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.fleet_revision_id_seq OWNED BY public.fleet_revision.id;

CREATE SEQUENCE public.fleet_revision_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

CREATE TABLE public.idempotency_keys (
    principal text NOT NULL,
    key text NOT NULL,
    request_hash text NOT NULL,
    status_code integer NOT NULL,
    response_body text NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL
);

CREATE TABLE public.leases (
    name text NOT NULL,
    holder text NOT NULL,
    renewed_at double precision NOT NULL,
    expires_at double precision NOT NULL,
    transitions integer DEFAULT 0 NOT NULL
);

CREATE TABLE public.nodes (
    name text NOT NULL,
    labels text DEFAULT '{}'::text NOT NULL,
    driver text DEFAULT ''::text NOT NULL,
    driver_info text DEFAULT '{}'::text NOT NULL,
    cpu_millicores bigint DEFAULT '0'::bigint NOT NULL,
    memory_bytes bigint DEFAULT '0'::bigint NOT NULL,
    disk_bytes bigint DEFAULT '0'::bigint NOT NULL,
    max_tenants bigint DEFAULT '0'::bigint NOT NULL,
    alloc_cpu_millicores bigint DEFAULT '0'::bigint NOT NULL,
    alloc_memory_bytes bigint DEFAULT '0'::bigint NOT NULL,
    alloc_disk_bytes bigint DEFAULT '0'::bigint NOT NULL,
    alloc_tenants bigint DEFAULT '0'::bigint NOT NULL,
    templates text DEFAULT '[]'::text NOT NULL,
    ksm_pages_shared bigint DEFAULT '0'::bigint NOT NULL,
    ksm_pages_sharing bigint DEFAULT '0'::bigint NOT NULL,
    cordoned boolean DEFAULT false NOT NULL,
    ready boolean DEFAULT false NOT NULL,
    not_ready_reason text DEFAULT ''::text NOT NULL,
    heartbeat_at double precision DEFAULT '0'::double precision NOT NULL,
    registered_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT alloc_tenants_must_not_be_negative CHECK ((alloc_tenants >= 0)),
    CONSTRAINT node_name_must_be_1_to_63_characters CHECK (((length(name) >= 1) AND (length(name) <= 63)))
);

CREATE TABLE public.plans (
    id text NOT NULL,
    template text NOT NULL,
    cpu_millicores bigint,
    memory_bytes bigint,
    disk_bytes bigint,
    pids bigint,
    ingress_ports text,
    description text DEFAULT ''::text NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT cpu_millicores_must_be_between_10_and_256000 CHECK (((cpu_millicores IS NULL) OR ((cpu_millicores >= 10) AND (cpu_millicores <= 256000)))),
    CONSTRAINT "disk_bytes_must_be_between_16Mi_and_16Ti" CHECK (((disk_bytes IS NULL) OR ((disk_bytes >= 16777216) AND (disk_bytes <= '17592186044416'::bigint)))),
    CONSTRAINT "memory_bytes_must_be_between_16Mi_and_1Ti" CHECK (((memory_bytes IS NULL) OR ((memory_bytes >= 16777216) AND (memory_bytes <= '1099511627776'::bigint)))),
    CONSTRAINT pids_must_be_between_8_and_4194304 CHECK (((pids IS NULL) OR ((pids >= 8) AND (pids <= 4194304))))
);

CREATE TABLE public.schema_migrations (
    version integer NOT NULL,
    description text NOT NULL,
    applied_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL
);

CREATE SEQUENCE public.schema_migrations_version_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.schema_migrations_version_seq OWNED BY public.schema_migrations.version;

CREATE TABLE public.signing_keys (
    kid text NOT NULL,
    secret text NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    retired_at timestamp with time zone,
    revoked_at timestamp with time zone
);

CREATE TABLE public.templates (
    name text NOT NULL,
    version text NOT NULL,
    cpu_millicores bigint NOT NULL,
    memory_bytes bigint NOT NULL,
    disk_bytes bigint NOT NULL,
    pids bigint NOT NULL,
    ingress_ports text DEFAULT '[80]'::text NOT NULL,
    description text DEFAULT ''::text NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    CONSTRAINT cpu_millicores_must_be_between_10_and_256000 CHECK (((cpu_millicores IS NULL) OR ((cpu_millicores >= 10) AND (cpu_millicores <= 256000)))),
    CONSTRAINT "disk_bytes_must_be_between_16Mi_and_16Ti" CHECK (((disk_bytes IS NULL) OR ((disk_bytes >= 16777216) AND (disk_bytes <= '17592186044416'::bigint)))),
    CONSTRAINT "memory_bytes_must_be_between_16Mi_and_1Ti" CHECK (((memory_bytes IS NULL) OR ((memory_bytes >= 16777216) AND (memory_bytes <= '1099511627776'::bigint)))),
    CONSTRAINT memory_bytes_must_be_whole_4ki_pages CHECK (((memory_bytes IS NULL) OR (mod(memory_bytes, (4096)::bigint) = 0))),
    CONSTRAINT pids_must_be_between_8_and_4194304 CHECK (((pids IS NULL) OR ((pids >= 8) AND (pids <= 4194304)))),
    CONSTRAINT template_name_must_be_a_dns_label CHECK ((name ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'::text))
);

CREATE TABLE public.tenant_status (
    name text NOT NULL,
    phase text NOT NULL,
    observed_generation bigint DEFAULT '0'::bigint NOT NULL,
    node text,
    url text,
    address text,
    template text,
    conditions text DEFAULT '[]'::text NOT NULL,
    last_error text,
    observed text,
    revision bigint DEFAULT '0'::bigint NOT NULL,
    updated_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL
);

CREATE TABLE public.tenant_tombstones (
    name text NOT NULL,
    revision bigint DEFAULT '0'::bigint NOT NULL,
    deleted_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL
);

CREATE TABLE public.tenants (
    id integer NOT NULL,
    name text NOT NULL,
    labels text DEFAULT '{}'::text NOT NULL,
    template text NOT NULL,
    cpu_millicores bigint,
    memory_bytes bigint,
    disk_bytes bigint,
    pids bigint,
    ingress_ports text,
    paused boolean DEFAULT false NOT NULL,
    node text,
    generation bigint DEFAULT '1'::bigint NOT NULL,
    revision bigint DEFAULT '0'::bigint NOT NULL,
    created_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    updated_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL,
    deletion_requested_at timestamp with time zone,
    finalized boolean DEFAULT false NOT NULL,
    CONSTRAINT cpu_millicores_must_be_between_10_and_256000 CHECK (((cpu_millicores IS NULL) OR ((cpu_millicores >= 10) AND (cpu_millicores <= 256000)))),
    CONSTRAINT "disk_bytes_must_be_between_16Mi_and_16Ti" CHECK (((disk_bytes IS NULL) OR ((disk_bytes >= 16777216) AND (disk_bytes <= '17592186044416'::bigint)))),
    CONSTRAINT ingress_ports_must_be_a_json_array CHECK (((ingress_ports IS NULL) OR
CASE
    WHEN (COALESCE(public.fleet_json_type(ingress_ports), ''::text) = 'array'::text) THEN (jsonb_array_length((ingress_ports)::jsonb) <= 32)
    ELSE false
END)),
    CONSTRAINT labels_must_be_a_json_object CHECK ((COALESCE(public.fleet_json_type(labels), ''::text) = 'object'::text)),
    CONSTRAINT "memory_bytes_must_be_between_16Mi_and_1Ti" CHECK (((memory_bytes IS NULL) OR ((memory_bytes >= 16777216) AND (memory_bytes <= '1099511627776'::bigint)))),
    CONSTRAINT memory_bytes_must_be_whole_4ki_pages CHECK (((memory_bytes IS NULL) OR (mod(memory_bytes, (4096)::bigint) = 0))),
    CONSTRAINT name_must_be_1_to_63_characters CHECK (((length(name) >= 1) AND (length(name) <= 63))),
    CONSTRAINT name_must_be_a_dns_label CHECK ((name ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'::text)),
    CONSTRAINT pids_must_be_between_8_and_4194304 CHECK (((pids IS NULL) OR ((pids >= 8) AND (pids <= 4194304)))),
    CONSTRAINT template_must_be_a_dns_label CHECK ((template ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?$'::text))
);

CREATE SEQUENCE public.tenants_id_seq
    AS integer
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.tenants_id_seq OWNED BY public.tenants.id;

CREATE TABLE public.webhook_events (
    event_id text NOT NULL,
    type text NOT NULL,
    tenant text,
    outcome text NOT NULL,
    received_at timestamp with time zone DEFAULT CURRENT_TIMESTAMP NOT NULL
);

ALTER TABLE ONLY public.events ALTER COLUMN id SET DEFAULT nextval('public.events_id_seq'::regclass);

ALTER TABLE ONLY public.fleet_revision ALTER COLUMN id SET DEFAULT nextval('public.fleet_revision_id_seq'::regclass);

ALTER TABLE ONLY public.schema_migrations ALTER COLUMN version SET DEFAULT nextval('public.schema_migrations_version_seq'::regclass);

ALTER TABLE ONLY public.tenants ALTER COLUMN id SET DEFAULT nextval('public.tenants_id_seq'::regclass);

COPY public.api_tokens (name, role, token_hash, created_at, revoked_at) FROM stdin;
\.

COPY public.billing_subscriptions (subscription_id, tenant, customer, plan, last_event_created, deleted_at) FROM stdin;
\.

COPY public.events (id, tenant, node, type, reason, action, message, duration_ms, generation, details, created_at) FROM stdin;
\.

COPY public.fleet_revision (id, value) FROM stdin;
1	0
\.

COPY public.idempotency_keys (principal, key, request_hash, status_code, response_body, created_at) FROM stdin;
\.

COPY public.leases (name, holder, renewed_at, expires_at, transitions) FROM stdin;
\.

COPY public.nodes (name, labels, driver, driver_info, cpu_millicores, memory_bytes, disk_bytes, max_tenants, alloc_cpu_millicores, alloc_memory_bytes, alloc_disk_bytes, alloc_tenants, templates, ksm_pages_shared, ksm_pages_sharing, cordoned, ready, not_ready_reason, heartbeat_at, registered_at) FROM stdin;
\.

COPY public.plans (id, template, cpu_millicores, memory_bytes, disk_bytes, pids, ingress_ports, description, created_at) FROM stdin;
price_basic	base	\N	134217728	\N	\N	\N		2026-11-30 20:34:20.474536+00
\.

COPY public.schema_migrations (version, description, applied_at) FROM stdin;
1	tenants, status, templates, events, triggers	2026-11-30 20:34:20.28756+00
2	api tokens, idempotency keys, webhook events, plans, signing keys	2026-11-30 20:34:20.28756+00
3	nodes and leases (scheduler, heartbeats)	2026-11-30 20:34:20.28756+00
4	tenant tombstones (deletions in the watch feed)	2026-11-30 20:34:20.28756+00
5	memory limits in whole 4Ki pages	2026-11-30 20:34:20.28756+00
\.

COPY public.signing_keys (kid, secret, created_at, retired_at, revoked_at) FROM stdin;
\.

COPY public.templates (name, version, cpu_millicores, memory_bytes, disk_bytes, pids, ingress_ports, description, created_at) FROM stdin;
base	1	500	268435456	1073741824	256	[80]	Built-in: a small Linux userland whose container serves HTTP on port 80	2026-11-30 20:34:20.28756+00
\.

COPY public.tenant_status (name, phase, observed_generation, node, url, address, template, conditions, last_error, observed, revision, updated_at) FROM stdin;
\.

COPY public.tenant_tombstones (name, revision, deleted_at) FROM stdin;
\.

COPY public.tenants (id, name, labels, template, cpu_millicores, memory_bytes, disk_bytes, pids, ingress_ports, paused, node, generation, revision, created_at, updated_at, deletion_requested_at, finalized) FROM stdin;
1	acme	{}	base	\N	\N	\N	64	\N	f	\N	1	1	2026-11-30 20:34:20.460731+00	2026-11-30 20:34:20.460731+00	\N	f
\.

COPY public.webhook_events (event_id, type, tenant, outcome, received_at) FROM stdin;
\.

SELECT pg_catalog.setval('public.events_id_seq', 1, false);

SELECT pg_catalog.setval('public.fleet_revision_id_seq', 1, false);

SELECT pg_catalog.setval('public.fleet_revision_seq', 1, true);

SELECT pg_catalog.setval('public.schema_migrations_version_seq', 1, false);

SELECT pg_catalog.setval('public.tenants_id_seq', 1, true);

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_token_hash_key UNIQUE (token_hash);

ALTER TABLE ONLY public.billing_subscriptions
    ADD CONSTRAINT billing_subscriptions_pkey PRIMARY KEY (subscription_id);

ALTER TABLE ONLY public.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.fleet_revision
    ADD CONSTRAINT fleet_revision_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.idempotency_keys
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (principal, key);

ALTER TABLE ONLY public.leases
    ADD CONSTRAINT leases_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.nodes
    ADD CONSTRAINT nodes_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.plans
    ADD CONSTRAINT plans_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.schema_migrations
    ADD CONSTRAINT schema_migrations_pkey PRIMARY KEY (version);

ALTER TABLE ONLY public.signing_keys
    ADD CONSTRAINT signing_keys_pkey PRIMARY KEY (kid);

ALTER TABLE ONLY public.templates
    ADD CONSTRAINT templates_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.tenant_status
    ADD CONSTRAINT tenant_status_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.tenant_tombstones
    ADD CONSTRAINT tenant_tombstones_pkey PRIMARY KEY (name);

ALTER TABLE ONLY public.tenants
    ADD CONSTRAINT tenants_name_key UNIQUE (name);

ALTER TABLE ONLY public.tenants
    ADD CONSTRAINT tenants_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.webhook_events
    ADD CONSTRAINT webhook_events_pkey PRIMARY KEY (event_id);

CREATE INDEX ix_billing_subscriptions_tenant ON public.billing_subscriptions USING btree (tenant);

CREATE INDEX ix_events_tenant ON public.events USING btree (tenant);

CREATE INDEX ix_tenant_status_revision ON public.tenant_status USING btree (revision);

CREATE INDEX ix_tenant_tombstones_revision ON public.tenant_tombstones USING btree (revision);

CREATE INDEX ix_tenants_revision ON public.tenants USING btree (revision);

CREATE TRIGGER a_status_revision_lock BEFORE INSERT OR DELETE OR UPDATE ON public.tenant_status FOR EACH STATEMENT EXECUTE FUNCTION public.fleet_revision_lock();

CREATE TRIGGER a_tenants_revision_lock BEFORE INSERT OR DELETE OR UPDATE ON public.tenants FOR EACH STATEMENT EXECUTE FUNCTION public.fleet_revision_lock();

CREATE TRIGGER a_tombstones_revision_lock BEFORE INSERT OR UPDATE ON public.tenant_tombstones FOR EACH STATEMENT EXECUTE FUNCTION public.fleet_revision_lock();

CREATE TRIGGER events_append_only BEFORE UPDATE ON public.events FOR EACH ROW EXECUTE FUNCTION public.fleet_events_append_only();

CREATE TRIGGER status_stamp BEFORE INSERT OR UPDATE ON public.tenant_status FOR EACH ROW EXECUTE FUNCTION public.fleet_status_stamp();

CREATE TRIGGER tenants_before_write BEFORE INSERT OR UPDATE ON public.tenants FOR EACH ROW EXECUTE FUNCTION public.fleet_tenants_before_write();

CREATE TRIGGER tenants_notify AFTER INSERT OR DELETE OR UPDATE ON public.tenants FOR EACH STATEMENT EXECUTE FUNCTION public.fleet_notify();

CREATE TRIGGER tenants_soft_delete BEFORE DELETE ON public.tenants FOR EACH ROW EXECUTE FUNCTION public.fleet_tenants_soft_delete();

CREATE TRIGGER tombstones_stamp BEFORE INSERT OR UPDATE ON public.tenant_tombstones FOR EACH ROW EXECUTE FUNCTION public.fleet_tombstone_stamp();

