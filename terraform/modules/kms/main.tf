# One customer-managed KMS key for the platform's data at rest: EKS secrets, RDS, ElastiCache,
# S3 and CloudWatch Logs.

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}
data "aws_partition" "current" {}

data "aws_iam_policy_document" "key" {
  # In a key policy, "*" as the resource means this key only, and kms:* for the account root is the
  # AWS default that keeps the key manageable through IAM (without it the key can become unmanageable).
  # checkov:skip=CKV_AWS_111:Key policy: the resource "*" is this key; the account root must keep full control (AWS default key policy).
  # checkov:skip=CKV_AWS_356:Key policy: the resource "*" is this key, not every resource.
  # checkov:skip=CKV_AWS_109:Key policy: the account root must keep permission management over its own key (AWS default key policy).
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root"]
    }
  }
  statement {
    sid       = "CloudWatchLogsEncrypt"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${data.aws_region.current.name}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${data.aws_partition.current.partition}:logs:${data.aws_region.current.name}:${data.aws_caller_identity.current.account_id}:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "Veza ${var.name}: data at rest"
  deletion_window_in_days = 30
  enable_key_rotation     = true
  policy                  = data.aws_iam_policy_document.key.json
  tags                    = var.tags
}

resource "aws_kms_alias" "this" {
  name          = "alias/veza-${var.name}"
  target_key_id = aws_kms_key.this.key_id
}
