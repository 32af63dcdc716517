output "role_arn" {
  description = "ARN of the role; annotate the ServiceAccounts with eks.amazonaws.com/role-arn."
  value       = aws_iam_role.this.arn
}
