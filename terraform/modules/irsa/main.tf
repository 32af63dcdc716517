# IAM role for the Veza workers' ServiceAccounts (IRSA): read and write the platform's bucket and use
# its KMS key, nothing else. The operator names the ServiceAccounts <platform>-api (API and
# migrations) and <platform>-worker (chat and stream workers).

locals {
  issuer   = replace(var.oidc_issuer_url, "https://", "")
  subjects = [for sa in var.service_accounts : "system:serviceaccount:${var.namespace}:${sa}"]
}

data "aws_iam_policy_document" "assume" {
  statement {
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.issuer}:sub"
      values   = local.subjects
    }
  }
}

data "aws_iam_policy_document" "s3" {
  statement {
    sid       = "ListBucket"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation"]
    resources = [var.bucket_arn]
  }
  statement {
    sid       = "Objects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${var.bucket_arn}/*"]
  }
  statement {
    sid       = "BucketKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role" "this" {
  name               = "veza-${var.name}-workers"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = var.tags
}

resource "aws_iam_role_policy" "s3" {
  name   = "veza-bucket"
  role   = aws_iam_role.this.id
  policy = data.aws_iam_policy_document.s3.json
}
