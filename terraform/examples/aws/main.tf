# A complete Veza installation on AWS: network, cluster, PostgreSQL, Redis, bucket, the workers' IAM
# role, NATS from its official Helm chart, the Veza chart and one VezaPlatform pointing at all of it.
# Not applied in this repository's CI (no cloud account or provider downloads there); see docs/deploy.md.

locals {
  platform = var.platform_name
  # The ServiceAccounts the operator creates for a platform (operator/veza_operator).
  service_accounts = ["${local.platform}-api", "${local.platform}-worker"]
}

module "kms" {
  source = "../../modules/kms"
  name   = var.name
  tags   = var.tags
}

module "vpc" {
  source      = "../../modules/vpc"
  name        = var.name
  cidr        = var.vpc_cidr
  az_count    = var.az_count
  kms_key_arn = module.kms.key_arn
  tags        = var.tags
}

module "eks" {
  source              = "../../modules/eks"
  name                = var.name
  kubernetes_version  = var.kubernetes_version
  subnet_ids          = module.vpc.private_subnet_ids
  public_access_cidrs = var.api_public_access_cidrs
  kms_key_arn         = module.kms.key_arn
  tags                = var.tags
}

module "rds" {
  source                   = "../../modules/rds"
  name                     = var.name
  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.private_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  kms_key_arn              = module.kms.key_arn
  tags                     = var.tags
}

module "redis" {
  source                   = "../../modules/elasticache"
  name                     = var.name
  vpc_id                   = module.vpc.vpc_id
  subnet_ids               = module.vpc.private_subnet_ids
  client_security_group_id = module.eks.cluster_security_group_id
  kms_key_arn              = module.kms.key_arn
  tags                     = var.tags
}

module "bucket" {
  source            = "../../modules/s3"
  bucket            = var.bucket_name
  kms_key_arn       = module.kms.key_arn
  access_log_bucket = var.access_log_bucket
  tags              = var.tags
}

module "workers_role" {
  source            = "../../modules/irsa"
  name              = var.name
  oidc_provider_arn = module.eks.oidc_provider_arn
  oidc_issuer_url   = module.eks.oidc_issuer_url
  namespace         = var.namespace
  service_accounts  = local.service_accounts
  bucket_arn        = module.bucket.bucket_arn
  kms_key_arn       = module.kms.key_arn
  tags              = var.tags
}

# -- in the cluster ---------------------------------------------------------------------------

resource "kubernetes_namespace_v1" "veza" {
  metadata {
    name = var.namespace
    labels = {
      "pod-security.kubernetes.io/enforce" = "restricted"
    }
  }
}

resource "kubernetes_namespace_v1" "nats" {
  metadata {
    name = "nats"
  }
}

resource "helm_release" "nats" {
  name       = "nats"
  namespace  = kubernetes_namespace_v1.nats.metadata[0].name
  repository = "https://nats-io.github.io/k8s/helm/charts/"
  chart      = "nats"
  version    = var.nats_chart_version
  wait       = true
  values = [yamlencode({
    config = {
      cluster   = { enabled = true, replicas = 3 }
      jetstream = { enabled = true, fileStore = { pvc = { size = "20Gi" } } }
    }
  })]
}

data "aws_secretsmanager_secret_version" "postgres" {
  secret_id = module.rds.master_user_secret_arn
}

# Connection strings for the VezaPlatform. No S3 keys: the workers use the IRSA role.
resource "kubernetes_secret_v1" "connections" {
  metadata {
    name      = "veza-connections"
    namespace = kubernetes_namespace_v1.veza.metadata[0].name
    # The operator reads only Secrets labelled for the platform (docs/operator.md, "What the operator refuses").
    labels = { "veza.io/usable-by" = local.platform }
  }
  data = {
    postgres-uri = format("postgresql://%s:%s@%s:%d/%s?sslmode=require", module.rds.username,
      urlencode(jsondecode(data.aws_secretsmanager_secret_version.postgres.secret_string)["password"]),
    module.rds.address, module.rds.port, module.rds.database)
    redis-url = module.redis.url
  }
}

# Created before the operator does, with the IRSA annotation; the operator's server-side apply keeps
# fields it does not set, such as this annotation.
resource "kubernetes_service_account_v1" "workers" {
  for_each = toset(local.service_accounts)
  metadata {
    name      = each.value
    namespace = kubernetes_namespace_v1.veza.metadata[0].name
    # Created here for IRSA, then handed over: the operator never takes over an object not labelled for it.
    labels = { "veza.io/usable-by" = local.platform }
    annotations = {
      "eks.amazonaws.com/role-arn" = module.workers_role.role_arn
    }
  }
  automount_service_account_token = false
  lifecycle {
    ignore_changes = [metadata[0].labels]
  }
}

resource "helm_release" "veza" {
  name      = "veza"
  namespace = kubernetes_namespace_v1.veza.metadata[0].name
  chart     = "${path.module}/../../../charts/veza"
  wait      = true
  values = [yamlencode({
    image = { tag = var.veza_version }
    examples = {
      enabled = true
      platform = {
        name = local.platform
        spec = {
          image = { tag = var.veza_version }
          connections = {
            postgres = { uriSecretRef = { name = kubernetes_secret_v1.connections.metadata[0].name, key = "postgres-uri" } }
            redis    = { urlSecretRef = { name = kubernetes_secret_v1.connections.metadata[0].name, key = "redis-url" } }
            nats     = { url = "nats://nats.${helm_release.nats.namespace}.svc:4222" }
            s3       = { bucket = module.bucket.bucket, region = module.bucket.region }
          }
          ingress = { host = var.host, className = var.ingress_class }
          api     = { replicas = 2 }
        }
      }
      chatRooms      = [{ name = "general", spec = { replicas = 2 } }]
      streamChannels = []
    }
  })]
  depends_on = [kubernetes_service_account_v1.workers]
}
